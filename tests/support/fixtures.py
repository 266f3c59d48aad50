"""Fixtures for the whole suite, registered by tests/conftest.py (test modules never import them).

Module-scoped fixtures get one instance per test module; a module may override any of them by
defining a fixture of the same name.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from kraken.config import build
from kraken.devcluster import Supervisor, free_port
from kraken.http.client import HttpClient, create_client
from kraken.http.config import HttpClientConfig
from kraken.origin.client import OriginClient
from kraken.origin.config import OriginConfig
from kraken.origin.server import create_origin_app
from tests.support.cluster import Herd, start_herd
from tests.support.origin import Origin, OriginFactory, Testfs, origin_settings, start_testfs


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    """A running herd (testfs, origin, build-index, proxy) shared by one test module."""
    h = start_herd(Path(tmp_path_factory.mktemp("herd")))
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client for tests that talk to real processes (modules may define their own);
    its deadline leaves room for whole blobs pulled through a herd on a loaded machine."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        yield s


@pytest.fixture
def http(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """The same client under the name most modules use."""
    return session


# ---- origins with a real testfs behind them (tests/support/origin.py) ----------------------


@pytest.fixture(scope="module")
def supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path_factory.mktemp("procs"))
    try:
        yield sup
    finally:
        sup.stop_all()


@pytest.fixture(scope="module")
def testfs_port(supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory) -> int:
    """One testfs process shared by the module (tests use random blobs, so they do not clash)."""
    return start_testfs(supervisor, "testfs", free_port(), tmp_path_factory.mktemp("testfs")).port


@pytest.fixture
async def kraken_http() -> AsyncIterator[HttpClient]:
    """Kraken's own HTTP client, as the components use it."""
    client = create_client(HttpClientConfig(connect_timeout=2, read_timeout=10))
    yield client
    await client.close()


@pytest.fixture
def testfs(testfs_port: int, session: aiohttp.ClientSession) -> Testfs:
    return Testfs(testfs_port, session)


@pytest.fixture
async def start_origin(
    tmp_path: Path, kraken_http: HttpClient, session: aiohttp.ClientSession
) -> AsyncIterator[OriginFactory]:
    """Start in-process origins: ``await start_origin(backend_port, port=..., **config overrides)``."""
    async with AsyncExitStack() as stack:
        count = 0

        async def start(backend_port: int, port: int | None = None, **overrides: Any) -> Origin:
            nonlocal count
            count += 1
            port = port or free_port()
            settings = origin_settings(tmp_path / f"origin{count}", port, backend_port, **overrides)
            server = TestServer(create_origin_app(build(OriginConfig, settings)), host="127.0.0.1", port=port)
            await server.start_server()
            stack.push_async_callback(server.close)
            addr = f"127.0.0.1:{port}"
            return Origin(addr, server, kraken_http, OriginClient(addr, kraken_http, poll_timeout=20), session)

        yield start


@pytest.fixture
async def origin(start_origin: OriginFactory, testfs_port: int) -> Origin:
    return await start_origin(testfs_port)
