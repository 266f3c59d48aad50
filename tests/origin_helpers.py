"""Helpers and fixtures for tests of origins with real testfs processes as their backends.

Shared by several test modules. Importing a ``test_*`` module into another makes pytest collect
its tests twice, so what they share lives here (fixtures included: a module that imports them
gets its own module-scoped instances).
"""
from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from kraken.config import build
from kraken.core.digest import Digest
from kraken.devcluster import CONFIG_ROOT, Process, Supervisor, free_port
from kraken.http.client import HttpClient, create_client
from kraken.http.config import HttpClientConfig
from kraken.origin.client import OriginClient
from kraken.origin.config import OriginConfig
from kraken.origin.server import SERVICE, create_origin_app
from kraken.origin.service import OriginService
from kraken.persisted import PersistedQueue

MB = 1 << 20
NS = "test/x"


# ---- helpers -------------------------------------------------------------------------------


async def until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def random_blob(size: int) -> tuple[bytes, Digest]:
    data = os.urandom(size)
    return data, Digest.of_bytes(data)


async def drained(queue: PersistedQueue) -> bool:
    return await queue.count() == 0


def backend_path(digest: Digest) -> str:
    return f"docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data"


def metric(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """The value of one sample; ``default`` if absent (a counter never incremented), else KeyError."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    if default is None:
        raise KeyError(f"{name} {labels} not in metrics")
    return default


def start_testfs(sup: Supervisor, name: str, port: int, root: Path) -> Process:
    """A real testfs process (blocking: call through asyncio.to_thread from async code)."""
    proc = Process(
        name, "testfs", port, CONFIG_ROOT / "testfs" / "base.yaml", sup.log_dir / f"{name}.log",
        extra_args=["--host", "127.0.0.1", "--root", str(root)],
    )
    return sup.start(proc)


def origin_settings(root: Path, port: int, testfs_port: int, **overrides: Any) -> dict[str, Any]:
    """Config of an origin on ``port`` writing back to testfs on ``testfs_port`` (plain data, as
    in a YAML file, so the config loader is exercised too)."""
    addr = f"127.0.0.1:{port}"
    settings: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {"root": str(root)},
        "advertise": addr,
        "ring": {"hosts": [addr], "max_replica": 1},
        "backends": [{"namespace": ".*", "backend": {"testfs": {
            "addr": f"127.0.0.1:{testfs_port}", "name_path": "sharded_docker_blob"}}}],
        "writeback": {"retry_interval": "50ms", "max_retry_interval": "200ms"},
        "replication": {"retry_interval": "50ms", "max_retry_interval": "200ms"},
        "metainfo": {"piece_lengths": {0: "1MB", "8MB": "2MB"}},
        "cleanup": {"interval": "1h"},
        # Every in-process origin seeds on a port of its own; idle torrents go quickly, so a
        # test's forcecleanup is not held back by a blob seeded for an earlier request.
        "p2p": {"listen": {"host": "127.0.0.1", "port": 0}, "seed_idle_time": "1s", "stats_interval": "100ms"},
    }
    settings.update(overrides)
    return settings


@dataclass
class Origin:
    addr: str
    server: TestServer
    http: HttpClient
    client: OriginClient
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def service(self) -> OriginService:
        return self.server.app[SERVICE]

    def blob_url(self, digest: Digest, ns: str = "test%2Fx") -> str:
        return f"{self.url}/namespace/{ns}/blobs/{digest}"

    async def metrics(self) -> str:
        async with self.session.get(f"{self.url}/metrics") as resp:
            return await resp.text()

    async def status(self, method: str, url: str, **kwargs: Any) -> int:
        async with self.session.request(method, url, **kwargs) as resp:
            await resp.read()
            return resp.status

    async def force_cleanup(self, ttl_hr: int = 0) -> list[str]:
        async with self.session.post(f"{self.url}/forcecleanup", params={"ttl_hr": str(ttl_hr)}) as resp:
            assert resp.status == 200
            return (await resp.json())["evicted"]

    def cached(self, digest: Digest) -> bool:
        return self.service.store.exists(digest)


class Testfs:
    """testfs seen over HTTP, as the origin's backend."""

    __test__ = False

    def __init__(self, port: int, session: aiohttp.ClientSession) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.session = session

    async def read(self, digest: Digest) -> bytes | None:
        async with self.session.get(f"{self.url}/files/{backend_path(digest)}") as resp:
            return await resp.read() if resp.status == 200 else None

    async def exists(self, digest: Digest) -> bool:
        async with self.session.head(f"{self.url}/files/{backend_path(digest)}") as resp:
            return resp.status == 200

    async def write(self, digest: Digest, data: bytes) -> None:
        async with self.session.post(f"{self.url}/files/{backend_path(digest)}", data=data) as resp:
            assert resp.status == 201


# ---- fixtures ------------------------------------------------------------------------------


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
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = create_client(HttpClientConfig(connect_timeout=2, read_timeout=10))
    yield client
    await client.close()


@pytest.fixture
def testfs(testfs_port: int, session: aiohttp.ClientSession) -> Testfs:
    return Testfs(testfs_port, session)


OriginFactory = Callable[..., Awaitable[Origin]]


@pytest.fixture
async def start_origin(
    tmp_path: Path, http: HttpClient, session: aiohttp.ClientSession
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
            return Origin(addr, server, http, OriginClient(addr, http, poll_timeout=20), session)

        yield start


@pytest.fixture
async def origin(start_origin: OriginFactory, testfs_port: int) -> Origin:
    return await start_origin(testfs_port)
