"""What every backend kind gets from the origin: ``/readiness`` follows the backends marked
``must_ready``, the bandwidth limit is divided by the ring's size, and a write-back cut off by
the backend dying is retried (the failure names the backend and the namespace) until the blob
is there, nothing lost. Real testfs processes, stopped and started."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from kraken.backend.bandwidth import ThrottledBackend
from kraken.devcluster import CONFIG_ROOT, Process, Supervisor, free_port, write_overlay
from kraken.http.client import create_client
from kraken.http.config import HttpClientConfig
from kraken.origin.client import OriginClient
from kraken.origin.service import metainfo_name
from tests.support.metrics import metric
from tests.support.origin import MB, NS, OriginFactory, Testfs, random_blob, start_testfs
from tests.support.waiting import until

READINESS_HTTP = {"connect_timeout": "1s", "read_timeout": "2s", "retries": 0}


def backends_on(port: int, **entry: Any) -> list[dict[str, Any]]:
    testfs = {"addr": f"127.0.0.1:{port}", "name_path": "sharded_docker_blob"}
    return [{"namespace": ".*", "backend": {"testfs": testfs}, **entry}]


async def readiness(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(f"{url}/readiness") as resp:
        return resp.status, await resp.text()


async def test_readiness_follows_a_must_ready_backend(
    start_origin: OriginFactory, supervisor: Supervisor, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    port = free_port()
    await asyncio.to_thread(start_testfs, supervisor, "ready-testfs", port, tmp_path / "ready-testfs")
    origin = await start_origin(port, backends=backends_on(port, must_ready=True), http_client=READINESS_HTTP)
    assert await readiness(session, origin.url) == (200, "OK\n")

    await asyncio.to_thread(supervisor.kill, "ready-testfs")
    status, body = await readiness(session, origin.url)
    assert status == 503
    assert "not ready: testfs backend for namespaces '.*'" in body, body

    await asyncio.to_thread(start_testfs, supervisor, "ready-testfs", port, tmp_path / "ready-testfs")
    assert await until(lambda: _ready(session, origin.url), what="ready again") == 200


async def _ready(session: aiohttp.ClientSession, url: str) -> int | None:
    status, _ = await readiness(session, url)
    return status if status == 200 else None


async def test_a_backend_not_marked_must_ready_does_not_matter(
    start_origin: OriginFactory, session: aiohttp.ClientSession,
) -> None:
    down = free_port()
    origin = await start_origin(down, http_client=READINESS_HTTP)
    assert (await readiness(session, origin.url))[0] == 200


async def test_bandwidth_is_divided_by_the_origins_on_the_ring(start_origin: OriginFactory, testfs_port: int) -> None:
    port = free_port()
    ring = {"hosts": [f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"],
            "max_replica": 1}
    bandwidth = {"enable": True, "egress_bits_per_sec": 900_000_000, "ingress_bits_per_sec": 300_000_000}
    origin = await start_origin(testfs_port, port=port, ring=ring,
                                backends=backends_on(testfs_port, bandwidth=bandwidth))
    backend = origin.service.running.router.for_namespace(NS)
    assert isinstance(backend, ThrottledBackend)
    assert backend.limiter.egress_bits_per_sec == 300_000_000
    assert backend.limiter.ingress_bits_per_sec == 100_000_000


async def test_a_new_blobs_write_back_goes_before_its_eager_metainfo(
    start_origin: OriginFactory, testfs_port: int, testfs: Testfs,
) -> None:
    """The origin's own SHA-1 pass over a pushed blob waits for the blob's upload to its
    backend, stretched to a few seconds here by a bandwidth limit: when the metainfo appears
    beside the blob, the backend holds the blob already."""
    bandwidth = {"enable": True, "egress_bits_per_sec": 16 * MB, "ingress_bits_per_sec": 16 * MB}
    origin = await start_origin(testfs_port, backends=backends_on(testfs_port, bandwidth=bandwidth),
                                background={"quiet": "100ms", "max_wait": "30s"})
    data, digest = random_blob(6 * MB)
    await origin.client.upload_bytes(NS, digest, data)
    assert not await testfs.exists(digest)  # 2 MB/s: the upload has only begun
    meta = origin.service.store.meta_path(digest, metainfo_name(""))
    await until(lambda: meta.exists(), what="the eager metainfo")
    assert await testfs.read(digest) == data


async def test_testfs_killed_during_write_back_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    """The origin and testfs as processes. A bandwidth limit stretches the write-back of the
    blob over a few seconds; testfs is killed once the write-back has asked it for the blob
    (its HEAD is in testfs's log) and started again later."""
    sup = Supervisor(tmp_path)
    testfs_port, origin_port = free_port(), free_port()
    addr = f"127.0.0.1:{origin_port}"
    size = 6 * MB
    # 2 MB/s with a 1 MB bucket: the upload waits 2.5 s for its share before it sends.
    bandwidth = {"enable": True, "egress_bits_per_sec": 16 * MB, "ingress_bits_per_sec": 16 * MB}
    config = write_overlay(tmp_path / "origin.yaml", CONFIG_ROOT / "origin" / "development.yaml", {
        "store": {"root": str(tmp_path / "origin")},
        "ring": {"hosts": [addr], "max_replica": 1},
        # Not development's fixed 15001, which a devcluster running meanwhile holds.
        "p2p": {"listen": {"host": "127.0.0.1", "port": free_port()}},
        "backends": backends_on(testfs_port, bandwidth=bandwidth),
        "writeback": {"retry_interval": "200ms", "max_retry_interval": "500ms"},
        "http_client": {"retries": 0},
    })
    origin = Process("origin", "origin", origin_port, config, sup.log_dir / "origin.log",
                     extra_args=["--host", "127.0.0.1", "--advertise", addr])
    http = create_client(HttpClientConfig(connect_timeout=2, read_timeout=10))
    try:
        testfs_proc = await asyncio.to_thread(start_testfs, sup, "testfs", testfs_port, tmp_path / "testfs")
        await asyncio.to_thread(sup.start, origin)
        client = OriginClient(addr, http, poll_timeout=20)
        data, digest = random_blob(size)
        await client.upload_bytes(NS, digest, data)  # acknowledged before the write-back

        await until(lambda: f"/files/docker/registry/v2/blobs/sha256/{digest.hex[:2]}" in testfs_proc.log_tail(),
                    what="the write-back's first request to testfs")
        await asyncio.to_thread(sup.kill, "testfs")
        async with aiohttp.ClientSession() as session:
            metrics_url = f"http://{addr}/metrics"

            async def failed() -> bool:
                async with session.get(metrics_url) as resp:
                    return metric(await resp.text(), "kraken_origin_writeback_failures_total") > 0

            await until(failed, what="the write-back to fail")
            failures = [line for line in origin.log_tail().splitlines() if "write-back failed, will retry" in line]
            assert failures, origin.log_tail()
            assert f"namespace={NS}" in failures[0]
            assert "backend=\"testfs backend for namespaces '.*'\"" in failures[0], failures[0]

            await asyncio.to_thread(start_testfs, sup, "testfs", testfs_port, tmp_path / "testfs")
            testfs = Testfs(testfs_port, session)
            assert await until(lambda: testfs.read(digest), timeout=30, what="write-back after restart") == data
        assert await client.read_bytes(NS, digest) == data
    finally:
        await http.close()
        await asyncio.to_thread(sup.stop_all)
