"""The origin as a real process (``python -m kraken origin``): a write-back queued while the
backend is down survives a crash of the origin and completes once the backend is up."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from kraken.devcluster import CONFIG_ROOT, Process, Supervisor, free_port, write_overlay
from kraken.http.client import create_client
from kraken.http.config import HttpClientConfig
from kraken.origin.client import OriginClient
from tests.support.origin import MB, NS, Testfs, random_blob, start_testfs
from tests.support.waiting import until


async def test_write_back_survives_an_origin_crash(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    testfs_port, origin_port = free_port(), free_port()
    addr = f"127.0.0.1:{origin_port}"
    config = write_overlay(tmp_path / "origin.yaml", CONFIG_ROOT / "origin" / "development.yaml", {
        "store": {"root": str(tmp_path / "origin")},
        "ring": {"hosts": [addr], "max_replica": 1},
        "backends": [{"namespace": ".*", "backend": {"testfs": {
            "addr": f"127.0.0.1:{testfs_port}", "name_path": "sharded_docker_blob"}}}],
        "writeback": {"retry_interval": "100ms", "max_retry_interval": "300ms"},
    })
    origin = Process("origin", "origin", origin_port, config, sup.log_dir / "origin.log",
                     extra_args=["--host", "127.0.0.1", "--advertise", addr])
    http = create_client(HttpClientConfig(connect_timeout=2, read_timeout=10))
    try:
        await asyncio.to_thread(sup.start, origin)
        assert f"identity={addr}" in origin.log_tail()
        client = OriginClient(addr, http, poll_timeout=20)
        data, digest = random_blob(2 * MB + 1)
        await client.upload_bytes(NS, digest, data)  # the backend is not running

        await asyncio.to_thread(sup.kill, "origin")
        await asyncio.to_thread(start_testfs, sup, "testfs", testfs_port, tmp_path / "testfs")
        await asyncio.to_thread(sup.start, origin)

        async with aiohttp.ClientSession() as session:
            testfs = Testfs(testfs_port, session)
            assert await until(lambda: testfs.read(digest), what="write-back after restart") == data
        assert await client.read_bytes(NS, digest) == data
    finally:
        await http.close()
        await asyncio.to_thread(sup.stop_all)
