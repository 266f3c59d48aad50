"""Helpers for tests of origins with real testfs processes as their backends.

Their fixtures (``supervisor``, ``testfs_port``, ``testfs``, ``start_origin``, ``origin``) are in
tests/support/fixtures.py, registered for the whole suite by tests/conftest.py.
"""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from kraken.core.digest import Digest
from kraken.devcluster import CONFIG_ROOT, Process, Supervisor
from kraken.http.client import HttpClient
from kraken.origin.client import OriginClient
from kraken.origin.server import SERVICE
from kraken.origin.service import OriginService
from kraken.persisted import PersistedQueue

MB = 1 << 20
NS = "test/x"


# ---- helpers -------------------------------------------------------------------------------


def random_blob(size: int) -> tuple[bytes, Digest]:
    data = os.urandom(size)
    return data, Digest.of_bytes(data)


async def drained(queue: PersistedQueue) -> bool:
    return await queue.count() == 0


def backend_path(digest: Digest) -> str:
    return f"docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data"


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


OriginFactory = Callable[..., Awaitable[Origin]]


def flip_byte(path: Path, offset: int = 0) -> None:
    """Corrupt one byte in place (same size; the mtime changes as with any write)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
