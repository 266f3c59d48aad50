"""The origin over real sockets: origins run in-process (aiohttp test server), the storage
backend is a real testfs process (``python -m kraken testfs``)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

import aiohttp
import libtorrent as lt
import pytest

from kraken.core.digest import Digest
from kraken.core.metainfo import info_hash
from kraken.devcluster import Supervisor, free_port
from kraken.http.client import HttpClient
from kraken.origin.client import BlobNotFound, BlobNotReady, OriginClient, OriginCluster
from kraken.origin.stream import DigestRefused, StreamBroken
from kraken.ring import HashRing, RingConfig
from tests.support.addresses import non_loopback_address, session_from
from tests.support.metrics import metric
from tests.support.origin import MB, NS, Origin, OriginFactory, Testfs, drained, random_blob, start_testfs
from tests.support.waiting import until


async def upload_raw(origin: Origin, digest: Digest, data: bytes, ns: str = "test%2Fx") -> tuple[int, str]:
    """POST + one PATCH + PUT by hand; returns the PUT's status and body."""
    uploads = f"{origin.blob_url(digest, ns)}/uploads"
    async with origin.session.post(uploads) as resp:
        assert resp.status == 200
        uid = resp.headers["Location"]
    headers = {"Content-Range": f"0-{len(data)}"}
    assert await origin.status("PATCH", f"{uploads}/{uid}", data=data, headers=headers) == 200
    async with origin.session.put(f"{uploads}/{uid}") as resp:
        return resp.status, await resp.text()


# ---- uploads -------------------------------------------------------------------------------


async def test_upload_file_then_download(origin: Origin, tmp_path: Path) -> None:
    data, digest = random_blob(3 * MB + 17)
    src = tmp_path / "blob"
    src.write_bytes(data)
    await origin.client.upload_file(NS, digest, src)

    assert await origin.client.read_bytes(NS, digest) == data
    assert await origin.client.stat(NS, digest) == len(data)
    assert await origin.status("HEAD", f"{origin.url}/internal/namespace/test%2Fx/blobs/{digest}") == 200
    assert metric(await origin.metrics(), "kraken_origin_uploads_total", source="push") == 1
    # Uploading again is a success (409 from the origin).
    await origin.client.upload_file(NS, digest, src)
    assert metric(await origin.metrics(), "kraken_origin_uploads_total", source="push") == 1


async def test_chunked_upload_and_range_reads(origin: Origin) -> None:
    data, digest = random_blob(200_000)
    uploads = f"{origin.blob_url(digest)}/uploads"
    async with origin.session.post(uploads) as resp:
        uid = resp.headers["Location"]
    for start, end in [(0, 70_000), (70_000, 150_000), (150_000, 200_000)]:
        headers = {"Content-Range": f"{start}-{end}"}
        assert await origin.status("PATCH", f"{uploads}/{uid}", data=data[start:end], headers=headers) == 200
    assert await origin.status("PUT", f"{uploads}/{uid}") == 201

    resp = await origin.client.open(NS, digest, "bytes=1000-1999")
    try:
        assert resp.status == 206
        assert await resp.read() == data[1000:2000]
    finally:
        resp.release()
    async with origin.session.get(origin.blob_url(digest), headers={"Range": "bytes=-10"}) as tail:
        assert tail.status == 206 and await tail.read() == data[-10:]
    async with origin.session.head(origin.blob_url(digest)) as head:
        assert head.status == 200 and int(head.headers["Content-Length"]) == len(data)


async def test_wrong_digest_is_refused_and_leaves_nothing(origin: Origin) -> None:
    data, _ = random_blob(10_000)
    claimed = Digest.of_bytes(b"something else")
    status, body = await upload_raw(origin, claimed, data)
    assert status == 400 and json.loads(body)["error"].startswith("digest mismatch")
    store = origin.service.store
    assert not store.exists(claimed)
    assert list(store.upload_dir.iterdir()) == []
    assert [p for p in store.cache_dir.rglob("*") if p.is_file()] == []
    assert await origin.service.writeback.worker.queue.count() == 0


async def test_out_of_order_chunk_is_416_and_unknown_upload_404(origin: Origin) -> None:
    data, digest = random_blob(1000)
    uploads = f"{origin.blob_url(digest)}/uploads"
    async with origin.session.post(uploads) as resp:
        uid = resp.headers["Location"]
    assert (
        await origin.status("PATCH", f"{uploads}/{uid}", data=data[500:], headers={"Content-Range": "500-1000"}) == 416
    )
    assert await origin.status("PATCH", f"{uploads}/{uid}", data=data[:500], headers={"Content-Range": "0-500"}) == 200
    assert await origin.status("PATCH", f"{uploads}/{uid}", data=data[:500], headers={"Content-Range": "0-500"}) == 416
    assert await origin.status("PATCH", f"{uploads}/nope", data=b"x", headers={"Content-Range": "0-1"}) == 404
    assert await origin.status("PUT", f"{uploads}/nope") == 404
    assert await origin.status("PATCH", f"{uploads}/{uid}", data=b"x", headers={"Content-Range": "junk"}) == 400
    assert await origin.status("POST", f"{origin.url}/namespace/test%2Fx/blobs/sha256:abc/uploads") == 400


async def test_existing_blob_is_409(origin: Origin) -> None:
    data, digest = random_blob(5000)
    uploads = f"{origin.blob_url(digest)}/uploads"
    uids = []
    for _ in range(2):  # two uploads of the same blob race; the second commit finds it present
        async with origin.session.post(uploads) as resp:
            uids.append(resp.headers["Location"])
        await origin.status("PATCH", f"{uploads}/{uids[-1]}", data=data, headers={"Content-Range": f"0-{len(data)}"})
    assert await origin.status("PUT", f"{uploads}/{uids[0]}") == 201
    assert await origin.status("PUT", f"{uploads}/{uids[1]}") == 409
    assert await origin.status("POST", uploads) == 409
    assert list(origin.service.store.upload_dir.iterdir()) == []


async def test_client_disconnect_mid_patch_leaves_nothing_in_the_cache(origin: Origin) -> None:
    data, digest = random_blob(MB)
    uploads = f"{origin.blob_url(digest)}/uploads"
    async with origin.session.post(uploads) as resp:
        uid = resp.headers["Location"]
    host, port = origin.addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"PATCH /namespace/test%2Fx/blobs/{digest}/uploads/{uid} HTTP/1.1\r\nHost: {origin.addr}\r\n"
        f"Content-Range: 0-{len(data)}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data[:300_000]
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    store = origin.service.store
    await until(lambda: store.upload_size(uid) == 300_000, what="the partial body to be written")

    assert not origin.cached(digest)
    assert await origin.status("PUT", f"{uploads}/{uid}") == 400  # the bytes are incomplete
    assert not origin.cached(digest)
    assert await origin.status("GET", origin.blob_url(digest)) == 404


async def test_empty_blob(origin: Origin) -> None:
    digest = Digest.of_bytes(b"")
    await origin.client.upload_bytes(NS, digest, b"")
    assert await origin.client.read_bytes(NS, digest) == b""
    url = f"{origin.url}/internal/namespace/test%2Fx/blobs/{digest}/metainfo"
    assert await origin.status("GET", url) == 422


# ---- who may call what ---------------------------------------------------------------------


async def test_forcecleanup_and_replica_uploads_answer_only_cluster_peers(origin: Origin) -> None:
    """A caller that is not on the ring (nor on this host) gets 403 for what only peers do;
    an ordinary upload stays open to it (the proxy's pushes)."""
    stranger = non_loopback_address()
    data, digest = random_blob(3000)
    uploads = f"{origin.blob_url(digest)}/uploads"
    async with session_from(stranger) as s:
        async with s.post(f"{origin.url}/forcecleanup") as r:
            body = await r.json()
            assert r.status == 403 and stranger in body["error"] and "cluster" in body["error"], body
        async with s.post(uploads, params={"replica": "true"}) as r:
            assert r.status == 403, await r.text()
        async with s.post(uploads) as r:
            assert r.status == 200
            uid = r.headers["Location"]
        async with s.patch(f"{uploads}/{uid}", data=data, headers={"Content-Range": f"0-{len(data)}"}) as r:
            assert r.status == 200
        async with s.put(f"{uploads}/{uid}", params={"replica": "true"}) as r:
            assert r.status == 403  # a replica commit would skip the write-back
        async with s.put(f"{uploads}/{uid}") as r:
            assert r.status == 201
    assert await origin.force_cleanup() == []  # loopback: an operator on this host


async def test_a_ring_member_address_may_force_a_cleanup(start_origin: OriginFactory, testfs_port: int) -> None:
    peer = non_loopback_address()
    port = free_port()
    origin = await start_origin(testfs_port, port=port,
                                ring={"hosts": [f"127.0.0.1:{port}", f"{peer}:{free_port()}"], "max_replica": 1})
    async with session_from(peer) as s, s.post(f"{origin.url}/forcecleanup") as r:
        assert r.status == 200, await r.text()


# ---- write-back ----------------------------------------------------------------------------


async def test_write_back_reaches_testfs(origin: Origin, testfs: Testfs) -> None:
    data, digest = random_blob(2 * MB)
    await origin.client.upload_bytes(NS, digest, data)
    assert await until(lambda: testfs.read(digest), what="write-back") == data
    await until(lambda: drained(origin.service.writeback.worker.queue), what="write-back queue drained")


async def test_push_while_backend_is_down_is_written_back_later_and_kept_until_then(
    start_origin: OriginFactory, supervisor: Supervisor, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    down_port = free_port()
    origin = await start_origin(down_port)
    data, digest = random_blob(MB + 1)
    await origin.client.upload_bytes(NS, digest, data)  # succeeds although the backend is down
    assert await origin.status("GET", f"{origin.url}/readiness") == 200

    await until(lambda: _failures(origin), what="a failed write-back attempt")
    assert metric(await origin.metrics(), "kraken_origin_writeback_pending") == 1
    assert await origin.force_cleanup(0) == []  # the only copy: not evictable
    assert origin.cached(digest)

    await asyncio.to_thread(start_testfs, supervisor, "late-testfs", down_port, tmp_path / "late-testfs")
    testfs = Testfs(down_port, session)
    assert await until(lambda: testfs.read(digest), what="write-back after the backend came up") == data
    evicted = await until(lambda: origin.force_cleanup(0), what="eviction once written back")
    assert evicted == [str(digest)] and not origin.cached(digest)
    assert metric(await origin.metrics(), "kraken_origin_writeback_pending") == 0


async def _failures(origin: Origin) -> bool:
    return metric(await origin.metrics(), "kraken_origin_writeback_failures_total") > 0


async def test_a_blob_pushed_to_a_second_namespace_is_written_to_its_backend(
    start_origin: OriginFactory, testfs_port: int, supervisor: Supervisor, session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    other_port = free_port()
    await asyncio.to_thread(start_testfs, supervisor, "other-testfs", other_port, tmp_path / "other")
    backends = [
        {"namespace": "other/.*", "backend": {"testfs": {
            "addr": f"127.0.0.1:{other_port}", "name_path": "sharded_docker_blob"}}},
        {"namespace": ".*", "backend": {"testfs": {
            "addr": f"127.0.0.1:{testfs_port}", "name_path": "sharded_docker_blob"}}},
    ]
    origin = await start_origin(testfs_port, backends=backends)
    data, digest = random_blob(4000)
    await origin.client.upload_bytes(NS, digest, data)
    await origin.client.upload_bytes("other/repo", digest, data)  # 409 from the origin: cached already
    assert await until(lambda: Testfs(other_port, session).read(digest), what="second backend") == data
    assert await Testfs(testfs_port, session).read(digest) == data


# ---- reads from the backend ----------------------------------------------------------------


async def test_missing_blob_is_fetched_from_the_backend_once(origin: Origin, testfs: Testfs) -> None:
    data, digest = random_blob(3 * MB)
    await testfs.write(digest, data)  # in the backend only, e.g. pushed through another origin

    impatient = OriginClient(origin.addr, origin.http, poll_timeout=0)
    with pytest.raises(BlobNotReady):  # the first answer is 202: the fetch has just started
        await impatient.read_bytes(NS, digest)
    reads = await asyncio.gather(*(origin.client.read_bytes(NS, digest) for _ in range(5)))
    assert reads == [data] * 5
    assert metric(await origin.metrics(), "kraken_origin_backend_fetches_total", result="ok") == 1
    assert await origin.status("HEAD", f"{origin.url}/internal/namespace/test%2Fx/blobs/{digest}") == 200
    assert await origin.service.writeback.worker.queue.count() == 0  # the backend has it already


async def test_local_copy_deleted_is_refetched(origin: Origin, testfs: Testfs) -> None:
    data, digest = random_blob(MB)
    await origin.client.upload_bytes(NS, digest, data)
    await until(lambda: testfs.read(digest), what="write-back")
    assert await until(lambda: origin.force_cleanup(0), what="eviction") == [str(digest)]
    internal = f"{origin.url}/internal/namespace/test%2Fx/blobs/{digest}"
    assert await origin.status("HEAD", internal) == 404  # the internal HEAD never fetches

    async with origin.session.head(origin.blob_url(digest)) as resp:
        assert resp.status == 202
    assert await origin.client.stat(NS, digest) == len(data)
    assert await origin.client.read_bytes(NS, digest) == data


async def test_corrupt_backend_copy_never_enters_the_cache(origin: Origin, testfs: Testfs) -> None:
    data, digest = random_blob(10_000)
    await testfs.write(digest, data[:-1] + b"!")
    assert await origin.status("GET", origin.blob_url(digest)) == 202
    await until(
        lambda: _fetch_result(origin, "corrupt"), what="the fetch to fail verification"
    )
    assert not origin.cached(digest)


async def _fetch_result(origin: Origin, result: str) -> bool:
    return metric(await origin.metrics(), "kraken_origin_backend_fetches_total", 0, result=result) >= 1


async def test_missing_everywhere_is_404(origin: Origin) -> None:
    _, digest = random_blob(10)
    assert await origin.status("GET", origin.blob_url(digest)) == 404
    assert await origin.status("HEAD", origin.blob_url(digest)) == 404
    assert await origin.client.stat(NS, digest) is None
    with pytest.raises(BlobNotFound):
        await origin.client.read_bytes(NS, digest)
    with pytest.raises(BlobNotFound):
        await origin.client.get_metainfo(NS, digest)


async def test_namespace_without_a_backend_is_404_not_an_error(start_origin: OriginFactory, testfs_port: int) -> None:
    backends = [{"namespace": "only/.*", "backend": {"testfs": {"addr": f"127.0.0.1:{testfs_port}"}}}]
    origin = await start_origin(testfs_port, backends=backends)
    _, digest = random_blob(10)
    assert await origin.client.stat("elsewhere", digest) is None


async def test_backend_down_on_a_miss_is_503_for_get_and_404_for_head(start_origin: OriginFactory) -> None:
    origin = await start_origin(free_port())
    _, digest = random_blob(10)
    assert await origin.status("GET", origin.blob_url(digest)) == 503
    assert await origin.client.stat(NS, digest) is None  # a push's existence check goes ahead


# ---- metainfo ------------------------------------------------------------------------------


async def test_metainfo_parses_with_libtorrent_and_is_stable(origin: Origin, testfs: Testfs) -> None:
    data, digest = random_blob(5 * MB + 3)
    await origin.client.upload_bytes(NS, digest, data)
    metainfo = await origin.client.get_metainfo(NS, digest)
    ti = lt.torrent_info(metainfo)
    assert ti.name() == digest.hex and ti.total_size() == len(data)
    assert ti.piece_length() == MB and ti.num_pieces() == 6  # piece_lengths {0: 1MB, 8MB: 2MB}
    assert ti.hash_for_piece(5) == hashlib.sha1(data[5 * MB:]).digest()
    meta_file = origin.service.store.meta_path(digest, "metainfo")
    assert meta_file.read_bytes() == metainfo  # generated once, kept beside the blob
    assert await origin.client.get_metainfo(NS, digest) == metainfo

    # Evicted and fetched back from the backend: regenerated with the same info-hash.
    await until(lambda: testfs.read(digest), what="write-back")
    await until(lambda: origin.force_cleanup(0), what="eviction")
    assert not meta_file.exists()
    url = f"{origin.url}/internal/namespace/test%2Fx/blobs/{digest}/metainfo"
    assert await origin.status("GET", url) == 202
    assert info_hash(await origin.client.get_metainfo(NS, digest)) == info_hash(metainfo)


async def test_large_blob_uses_the_larger_piece_length(origin: Origin) -> None:
    data, digest = random_blob(9 * MB)
    await origin.client.upload_bytes(NS, digest, data)
    assert lt.torrent_info(await origin.client.get_metainfo(NS, digest)).piece_length() == 2 * MB


# ---- namespaces, locations, metrics --------------------------------------------------------


async def test_namespace_with_a_slash_encoded_or_not(origin: Origin, testfs: Testfs) -> None:
    data, digest = random_blob(1234)
    assert (await upload_raw(origin, digest, data, ns="library/ubuntu"))[0] == 201
    for ns in ("library%2Fubuntu", "library/ubuntu"):
        async with origin.session.get(origin.blob_url(digest, ns)) as resp:
            assert resp.status == 200 and await resp.read() == data
    assert await origin.client.read_bytes("library/ubuntu", digest) == data
    assert await until(lambda: testfs.read(digest), what="write-back") == data


async def test_locations_are_the_ring_owners(start_origin: OriginFactory, testfs_port: int) -> None:
    port = free_port()
    hosts = [f"127.0.0.1:{port}", "10.0.0.1:15002", "10.0.0.2:15002"]
    origin = await start_origin(testfs_port, port=port, ring={"hosts": hosts, "max_replica": 2})
    for _ in range(5):
        _, digest = random_blob(10)
        assert await origin.client.locations(digest) == HashRing(hosts, 2).owners(digest)


async def test_metrics_and_health(origin: Origin) -> None:
    text = await origin.metrics()
    for name in ("kraken_origin_writeback_pending", "kraken_origin_replication_pending"):
        assert metric(text, name) == 0
    assert await origin.status("GET", f"{origin.url}/health") == 200


# ---- several origins -----------------------------------------------------------------------


async def test_push_is_replicated_to_the_other_owner(start_origin: OriginFactory, testfs_port: int) -> None:
    ports = [free_port(), free_port()]
    ring = {"hosts": [f"127.0.0.1:{p}" for p in ports], "max_replica": 2}
    a, b = [await start_origin(testfs_port, port=p, ring=ring) for p in ports]
    data, digest = random_blob(MB + 5)
    await a.client.upload_bytes(NS, digest, data)
    await until(lambda: b.cached(digest), what="replication")
    assert await b.client.read_bytes(NS, digest) == data
    assert metric(await b.metrics(), "kraken_origin_uploads_total", source="replica") == 1
    # The replica neither copies it back nor writes it back before its delay. (b queued any
    # copy of its own while committing, i.e. before a's replication task could finish.)
    await until(lambda: drained(a.service.replicator.worker.queue), what="replication queue drained")
    await until(lambda: drained(b.service.replicator.worker.queue), what="replica's queue drained")
    assert metric(await a.metrics(), "kraken_http_requests_total", 0, method="POST", status="409") == 0
    [task] = await b.service.writeback.worker.queue.all()
    assert task.next_attempt > time.time() + 60


async def test_cluster_routes_to_the_owner_and_around_a_dead_one(
    start_origin: OriginFactory, testfs_port: int, kraken_http: HttpClient
) -> None:
    port = free_port()
    live = f"127.0.0.1:{port}"
    dead = f"127.0.0.1:{free_port()}"
    origin = await start_origin(testfs_port, port=port, ring={"hosts": [live, dead], "max_replica": 1})
    cluster = OriginCluster(RingConfig([live, dead], 1), kraken_http)
    ring = HashRing([live, dead], 1)
    blobs = [random_blob(100 + i) for i in range(8)]
    assert {ring.owners(d)[0] for _, d in blobs} == {live, dead}  # both hosts own some

    for data, digest in blobs:
        await cluster.upload_bytes(NS, digest, data)
        assert await cluster.read_bytes(NS, digest) == data
        assert origin.cached(digest)
    assert await cluster.locations(blobs[0][1]) == [live]  # the dead origin is off the ring
    assert await cluster.stat(NS, blobs[0][1]) == 100
    assert lt.torrent_info(await cluster.get_metainfo(NS, blobs[0][1])).total_size() == 100


async def test_periodic_cleanup_evicts_idle_written_back_blobs_only(
    start_origin: OriginFactory, testfs_port: int
) -> None:
    origin = await start_origin(testfs_port, cleanup={"interval": "50ms", "tti": "0s"})
    data, digest = random_blob(1000)
    await origin.client.upload_bytes(NS, digest, data)
    await until(lambda: not origin.cached(digest), what="eviction by the cleanup loop")
    assert await Testfs(testfs_port, origin.session).read(digest) == data  # written back first


# ---- uploads streamed before their digest is known (what the proxy does) ------------------------


async def test_streamed_upload_commits_under_the_digest_named_last(origin: Origin, testfs: Testfs) -> None:
    data, digest = random_blob(3 * MB + 11)
    stream = await origin.client.start_stream(NS)
    for start in range(0, len(data), 256 * 1024):
        await stream.write(data[start:start + 256 * 1024])
    await stream.commit(digest)
    assert await origin.client.read_bytes(NS, digest) == data
    assert list(origin.service.store.upload_dir.iterdir()) == []
    await until(lambda: testfs.exists(digest), what="write-back of the streamed blob")
    assert metric(await origin.metrics(), "kraken_origin_uploads_total", source="push") == 1


async def test_streamed_upload_with_a_wrong_digest_leaves_nothing(origin: Origin) -> None:
    data, _ = random_blob(100_000)
    claimed = Digest.of_bytes(b"not these bytes")
    stream = await origin.client.start_stream(NS)
    await stream.write(data)
    with pytest.raises(DigestRefused, match="digest mismatch"):
        await stream.commit(claimed)
    store = origin.service.store
    assert not store.exists(claimed) and not store.exists(Digest.of_bytes(data))
    assert list(store.upload_dir.iterdir()) == []


async def test_wrong_bytes_under_a_cached_digest_are_refused(origin: Origin) -> None:
    """A commit naming a blob the origin has already is refused when its own bytes are
    wrong, not taken for the cached blob: a proxy relies on this answer to refuse the push."""
    data, digest = random_blob(100_000)
    await origin.client.upload_bytes(NS, digest, data)
    stream = await origin.client.start_stream(NS)
    await stream.write(os.urandom(100_000))
    with pytest.raises(DigestRefused, match="digest mismatch"):
        await stream.commit(digest)
    store = origin.service.store
    assert await store.verified_path(digest) is not None
    assert list(store.upload_dir.iterdir()) == []


async def test_aborted_stream_is_dropped_by_the_origin(origin: Origin) -> None:
    stream = await origin.client.start_stream(NS)
    await stream.write(os.urandom(50_000))
    assert len(list(origin.service.store.upload_dir.iterdir())) == 1
    await stream.abort()
    await until(lambda: not list(origin.service.store.upload_dir.iterdir()), what="the upload to be dropped")


async def test_stream_to_an_origin_that_went_away_breaks(origin: Origin) -> None:
    data, digest = random_blob(MB)
    stream = await origin.client.start_stream(NS)
    await stream.write(data[: MB // 2])
    await origin.server.close()
    with pytest.raises(StreamBroken):
        await stream.write(data[MB // 2:])
        await stream.commit(digest)
