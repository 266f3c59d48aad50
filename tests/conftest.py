"""Fixtures shared by the whole suite."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

# The real-client helpers assert on bytes and digests: have pytest rewrite them for readable
# failures (this must happen before their first import).
pytest.register_assert_rewrite("tests.realclients", "tests.kraken_images")

from tests.cluster import Herd, start_herd
from tests.kraken_images import docker_env, kraken_images  # noqa: F401 - shared fixtures
from tests.realclients import containerd, distribution_registry, dockerd, podman  # noqa: F401 - shared fixtures


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
    """A plain HTTP client for tests that talk to real processes (modules may define their own)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture
def http(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """The same client under the name most modules use."""
    return session
