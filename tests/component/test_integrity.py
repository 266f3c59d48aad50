"""Integrity of the origin's blobs (issue 9): corrupt cache files are never served but
quarantined and fetched again, write-back never trusts a backend copy it has not read back,
and failed uploads leave no files. Origins run in-process over real sockets; the backend is a
real testfs process."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import generate_latest

from kraken.agent.blobs import METAINFO_META, AgentBlobs
from kraken.core.digest import Digest
from kraken.core.metainfo import generate_metainfo, info_hash
from kraken.devcluster import free_port
from kraken.metrics import Metrics
from kraken.p2p import P2PSession
from kraken.proxy.config import BuildIndexConfig, ProxyConfig, StoreConfig
from kraken.proxy.server import create_proxy_app
from kraken.ring import RingConfig
from kraken.store.cas import QUARANTINED_HELP, CAStore
from tests.support.metrics import metric
from tests.support.origin import MB, NS, Origin, OriginFactory, Testfs, drained, flip_byte, random_blob
from tests.support.p2p import loopback_config, running_tracker
from tests.support.waiting import until

QUARANTINED = "kraken_origin_blobs_quarantined_total"


async def pushed_and_written_back(origin: Origin, size: int = MB + 7) -> tuple[bytes, Digest]:
    data, digest = random_blob(size)
    await origin.client.upload_bytes(NS, digest, data)
    await until(lambda: drained(origin.service.writeback.worker.queue), what="write-back done")
    return data, digest


async def get_blob(origin: Origin, digest: Digest) -> tuple[int, bytes]:
    async with origin.session.get(origin.blob_url(digest)) as resp:
        return resp.status, await resp.read()


# ---- 1. a corrupt cache file is never served ------------------------------------------------


async def test_corrupt_cache_file_is_quarantined_and_fetched_again(origin: Origin) -> None:
    data, digest = await pushed_and_written_back(origin)
    path = origin.service.store.path(digest)
    flip_byte(path, 1000)

    status, _ = await get_blob(origin, digest)
    assert status == 202  # not served: quarantined, and being fetched from the backend
    assert metric(await origin.metrics(), QUARANTINED) == 1
    assert await origin.client.read_bytes(NS, digest) == data
    assert path.read_bytes() == data
    quarantined = list((origin.service.store.root / "quarantine").iterdir())
    assert [p.name.split(".")[0] for p in quarantined] == [f"sha256-{digest.hex}"]
    assert metric(await origin.metrics(), QUARANTINED) == 1


async def test_first_read_after_a_restart_hashes_even_when_the_stat_is_unchanged(
    start_origin: OriginFactory, testfs_port: int, tmp_path: Path
) -> None:
    """A corruption that kept size and mtime is caught on the first read by a new process."""
    first = await start_origin(testfs_port)
    data, digest = await pushed_and_written_back(first)
    root = first.service.store.root
    await first.server.close()
    path = root / "cache" / "sha256" / digest.hex[:2] / digest.hex[2:4] / digest.hex
    st = path.stat()
    flip_byte(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    second = await start_origin(testfs_port, store={"root": str(root)})
    assert await second.client.read_bytes(NS, digest) == data
    assert metric(await second.metrics(), QUARANTINED) == 1


async def test_head_of_a_corrupt_cached_blob_does_not_claim_it(origin: Origin) -> None:
    """The existence check before a push is checked too: a client told 200 would skip the
    upload, and a push's HEAD must never vouch for bytes nobody verified."""
    _, digest = await pushed_and_written_back(origin, 4096)
    flip_byte(origin.service.store.path(digest))
    assert await origin.status("HEAD", origin.blob_url(digest, "fresh%2Fns")) == 202
    assert metric(await origin.metrics(), QUARANTINED) == 1


# ---- 2. write-back trusts only a copy it read back -------------------------------------------


async def test_writeback_overwrites_a_same_size_wrong_backend_copy(origin: Origin, testfs: Testfs) -> None:
    data, digest = random_blob(MB + 3)
    planted = bytes(len(data))
    await testfs.write(digest, planted)

    await origin.client.upload_bytes(NS, digest, data)
    await until(lambda: drained(origin.service.writeback.worker.queue), what="write-back done")
    assert await testfs.read(digest) == data
    assert metric(await origin.metrics(), "kraken_origin_backend_corrupt_copies_total") == 1

    # The cache's copy may go now: the backend's is good, so the blob stays servable.
    assert str(digest) in await origin.force_cleanup()
    assert await origin.client.read_bytes(NS, digest) == data


async def test_writeback_of_a_verified_backend_copy_uploads_nothing(origin: Origin, testfs: Testfs) -> None:
    data, digest = random_blob(4096)
    await testfs.write(digest, data)
    await origin.client.upload_bytes(NS, digest, data)
    await until(lambda: drained(origin.service.writeback.worker.queue), what="write-back done")
    text = await origin.metrics()
    assert metric(text, "kraken_origin_writebacks_total", default=0) == 0
    assert metric(text, "kraken_origin_backend_corrupt_copies_total") == 0


async def test_corrupt_backend_copy_is_replaced_from_a_ring_owner(
    start_origin: OriginFactory, testfs_port: int, testfs: Testfs
) -> None:
    ports = [free_port(), free_port()]
    ring = {"hosts": [f"127.0.0.1:{p}" for p in ports], "max_replica": 2}
    a, b = [await start_origin(testfs_port, port=p, ring=ring) for p in ports]
    data, digest = random_blob(MB + 11)
    await a.client.upload_bytes(NS, digest, data)
    await until(lambda: b.cached(digest), what="replication")
    await until(lambda: drained(a.service.replicator.worker.queue), what="replication done")
    await until(lambda: drained(a.service.writeback.worker.queue), what="write-back done")
    assert str(digest) in await a.force_cleanup()
    await testfs.write(digest, bytes(len(data)))  # the backend copy goes bad

    assert await a.client.read_bytes(NS, digest) == data
    assert metric(await a.metrics(), "kraken_origin_backend_fetches_total", result="repaired") == 1
    assert await until(lambda: _backend_has(testfs, digest, data), what="backend copy replaced")


async def _backend_has(testfs: Testfs, digest: Digest, data: bytes) -> bool:
    return await testfs.read(digest) == data


# ---- 4. failed uploads leave no files ---------------------------------------------------------


async def test_upload_write_failing_with_disk_full_removes_the_upload(origin: Origin) -> None:
    data, digest = random_blob(5 * MB)
    uploads = f"{origin.blob_url(digest)}/uploads"
    async with origin.session.post(uploads) as resp:
        uid = resp.headers["Location"]
    path = origin.service.store.upload_dir / uid
    path.unlink()
    path.symlink_to("/dev/full")  # every write there fails with ENOSPC

    async with origin.session.patch(f"{uploads}/{uid}", data=data, headers={"Content-Range": f"0-{len(data)}"}) as resp:
        assert resp.status == 507
        assert "No space left on device" in await resp.text()
    assert list(origin.service.store.upload_dir.iterdir()) == []
    assert await origin.status("PATCH", f"{uploads}/{uid}", data=b"x", headers={"Content-Range": "0-1"}) == 404


# ---- the proxy checks what it relays --------------------------------------------------------


async def test_proxy_cuts_short_a_whole_blob_that_fails_its_digest(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """An origin (here a fake one) sending wrong bytes: the client gets a short body, never
    the full wrong one; a Range read is relayed as is (a part cannot be checked)."""
    good = os.urandom(3 * MB + 1)
    digest = Digest.of_bytes(good)
    bad = bytearray(good)
    bad[-1] ^= 0xFF

    async def blob(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(bad))})
        return web.FileResponse(tmp_path / "bad") if "Range" in request.headers else web.Response(body=bytes(bad))

    (tmp_path / "bad").write_bytes(bad)
    fake = web.Application()
    fake.router.add_get("/namespace/{ns}/blobs/{digest}", blob)
    fake_server = TestServer(fake, host="127.0.0.1")
    await fake_server.start_server()
    fake_addr = f"127.0.0.1:{fake_server.port}"
    config = ProxyConfig(store=StoreConfig(str(tmp_path / "proxy")), origins=RingConfig([fake_addr]),
                         build_index=BuildIndexConfig(fake_addr))
    proxy = TestServer(create_proxy_app(config), host="127.0.0.1")
    await proxy.start_server()
    try:
        url = f"http://127.0.0.1:{proxy.port}/v2/some/repo/blobs/{digest}"
        async with session.get(url) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        async with session.get(url, headers={"Range": "bytes=0-99"}) as resp:
            assert resp.status == 206 and await resp.read() == good[:100]
        async with session.get(f"http://127.0.0.1:{proxy.port}/metrics") as resp:
            assert metric(await resp.text(), "kraken_proxy_blob_digest_mismatches_total") == 1
    finally:
        await proxy.close()
        await fake_server.close()


async def test_quarantined_blob_the_backend_lacks_comes_from_a_ring_owner(
    start_origin: OriginFactory, testfs_port: int
) -> None:
    """Corrupted before its write-back: the replica on the other owner is the good copy."""
    ports = [free_port(), free_port()]
    ring = {"hosts": [f"127.0.0.1:{p}" for p in ports], "max_replica": 2}
    backends = [{"namespace": "test/.*", "backend": {"testfs": {
        "addr": f"127.0.0.1:{testfs_port}", "name_path": "sharded_docker_blob"}}}]
    a, b = [await start_origin(testfs_port, port=p, ring=ring, backends=backends) for p in ports]
    data, digest = random_blob(MB + 13)
    await a.client.upload_bytes("nobackend/x", digest, data)  # its write-back cannot succeed
    await until(lambda: b.cached(digest), what="replication")
    flip_byte(a.service.store.path(digest), 5)

    assert await a.client.read_bytes("nobackend/x", digest) == data
    assert metric(await a.metrics(), "kraken_origin_backend_fetches_total", result="replica") == 1
    assert a.service.store.path(digest).read_bytes() == data


# ---- an agent seeding a corrupt cached blob ----------------------------------------------------


class _Tracker:
    """What AgentBlobs needs of its tracker client to seed a cached blob: the announce URL."""

    def __init__(self, announce_url: str) -> None:
        self.announce_url = announce_url


async def test_agent_seeding_a_corrupt_cached_blob_quarantines_it(tmp_path: Path) -> None:
    """A corruption the stat cannot see, found when a peer asks the agent for a piece: the
    agent stops counting the file as good (the next read downloads the blob again)."""
    metrics = Metrics("agent")
    quarantined = metrics.counter("kraken_agent_blobs_quarantined_total", QUARANTINED_HELP)
    cas = CAStore(tmp_path / "agent", durable=False, quarantined=quarantined)
    data, digest = random_blob(MB + 21)
    await cas.put_bytes(digest, data)
    metainfo = generate_metainfo(cas.path(digest), digest.hex, 256 << 10)
    await cas.write_meta(digest, METAINFO_META, metainfo)
    async with running_tracker() as tracker:
        seeder = await P2PSession.start(loopback_config(), metrics, role="agent")
        downloader = await P2PSession.start(loopback_config(), Metrics("downloader"), role="agent")
        blobs = AgentBlobs(cas, tmp_path / "agent" / "download", seeder, _Tracker(tracker.url), 60.0, metrics)  # type: ignore[arg-type]
        try:
            assert await blobs.fetch(NS, digest) == cas.path(digest)  # a cache hit, seeded again
            await until(lambda: info_hash(metainfo) in seeder.torrents(), what="the agent to seed")
            path = cas.path(digest)
            st = path.stat()
            flip_byte(path, MB)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

            download = asyncio.ensure_future(downloader.download(metainfo, tmp_path / "peer", tracker.url, timeout=20))
            await until(lambda: not cas.exists(digest), what="the corrupt file to be quarantined")
            assert metric(generate_latest(metrics.registry).decode(), "kraken_agent_blobs_quarantined_total") == 1
            download.cancel()
            await asyncio.gather(download, return_exceptions=True)
        finally:
            await blobs.close()
            await downloader.close()
            await seeder.close()
