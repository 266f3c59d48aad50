"""Origins seed blobs over BitTorrent.

Real herd processes (testfs, origin, tracker, ...) and, in the test, a downloader
:class:`~kraken.p2p.P2PSession` standing in for an agent: the tracker's metainfo request makes
the origin seed the blob, the downloader finds the origin through the tracker (the origin does
not announce: the tracker offers it from ``origin_p2p``) and gets identical bytes; the origin
counts the upload, keeps a seeded blob from eviction and drops the torrent once idle. The
``seed_on_commit`` flag is checked on an in-process origin. No sleeps: every wait polls a
condition against a deadline.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from kraken.config import ListenConfig
from kraken.http.client import HttpClient
from kraken.metrics import Metrics
from kraken.origin.client import OriginClient
from kraken.p2p import P2PConfig, P2PSession
from tests.support.cluster import Herd, start_herd
from tests.support.metrics import metric
from tests.support.origin import MB, NS, OriginFactory, backend_path, random_blob
from tests.support.waiting import until

SEED_IDLE_TIME = 3.0


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    h = start_herd(Path(tmp_path_factory.mktemp("seeding")), overrides={
        "origin": {
            "p2p": {"listen": {"host": "127.0.0.1"}, "seed_idle_time": f"{SEED_IDLE_TIME}s", "stats_interval": "200ms"},
            "writeback": {"retry_interval": "50ms", "max_retry_interval": "200ms"},
        },
    })
    try:
        yield h
    finally:
        h.stop()



@pytest.fixture
async def downloader() -> AsyncIterator[P2PSession]:
    p2p = await P2PSession.start(P2PConfig(listen=ListenConfig(host="127.0.0.1", port=0)), Metrics("downloader"))
    try:
        yield p2p
    finally:
        await p2p.close()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as resp:
        return resp.status, await resp.read()


async def origin_metric(session: aiohttp.ClientSession, herd: Herd, name: str) -> float:
    return metric((await get(session, f"{herd.origin.url}/metrics"))[1].decode(), name, default=0.0)


async def force_cleanup(session: aiohttp.ClientSession, herd: Herd) -> list[str]:
    async with session.post(f"{herd.origin.url}/forcecleanup", params={"ttl_hr": "0"}) as resp:
        assert resp.status == 200
        return (await resp.json())["evicted"]


async def test_origin_seeds_what_the_tracker_asked_for_then_lets_it_go(
    herd: Herd, session: aiohttp.ClientSession, kraken_http: HttpClient, downloader: P2PSession, tmp_path: Path,
) -> None:
    data, digest = random_blob(3 * MB + 17)
    await OriginClient(herd.origin.addr, kraken_http).upload_bytes(NS, digest, data)
    assert await origin_metric(session, herd, "kraken_p2p_active_torrents") == 0  # pushed, not seeded yet

    status, metainfo = await get(session, f"{herd.tracker.url}/namespace/{quote(NS, safe='')}/blobs/{digest}/metainfo")
    assert status == 200
    assert await origin_metric(session, herd, "kraken_p2p_active_torrents") == 1

    staging = tmp_path / "staging"
    staging.mkdir()
    result = await downloader.download(metainfo, staging, f"{herd.tracker.url}/announce", timeout=60)
    assert result.path.read_bytes() == data
    assert result.downloaded_by_source["origin"] > 0  # the origin's peer id marks its connection

    # The upload counter is refreshed every stats_interval.
    await until(lambda: origin_upload_at_least(session, herd, len(data)), what="the origin's upload bytes")

    # Written back, so only the seeding protects the blob now. Asking the origin for the
    # metainfo again counts as seeding activity, so the torrent is certainly still there.
    await until(lambda: backend_has(session, herd, backend_path(digest)), what="write-back")
    assert (await get(session, f"{herd.origin.url}/internal/namespace/{quote(NS, safe='')}/blobs/{digest}/metainfo"))[
        0
    ] == 200
    assert str(digest) not in await force_cleanup(session, herd)
    assert (await get(session, f"{herd.origin.url}/namespace/{quote(NS, safe='')}/blobs/{digest}"))[1] == data

    # The downloader leaves; nothing is uploaded any more, so the origin drops the torrent
    # after seed_idle_time, and the blob can then be evicted.
    await downloader.close()
    await until(lambda: no_torrents(session, herd), timeout=SEED_IDLE_TIME + 20, what="idle removal")
    assert await force_cleanup(session, herd) == [str(digest)]


async def origin_upload_at_least(session: aiohttp.ClientSession, herd: Herd, size: int) -> bool:
    return await origin_metric(session, herd, "kraken_p2p_upload_bytes_total") >= size


async def no_torrents(session: aiohttp.ClientSession, herd: Herd) -> bool:
    return await origin_metric(session, herd, "kraken_p2p_active_torrents") == 0


async def backend_has(session: aiohttp.ClientSession, herd: Herd, path: str) -> bool:
    async with session.head(f"{herd.testfs.url}/files/{path}") as resp:
        return resp.status == 200


async def test_seed_on_commit_seeds_before_anyone_asks(start_origin: OriginFactory, testfs_port: int) -> None:
    origin = await start_origin(
        testfs_port, p2p={"listen": {"host": "127.0.0.1", "port": 0}}, seed_on_commit=True,
    )
    data, digest = random_blob(MB + 5)
    await origin.client.upload_bytes(NS, digest, data)
    p2p = origin.service.p2p
    assert p2p is not None
    paths = await until(lambda: list(p2p.torrents().values()), what="seeding after the commit")
    assert paths == [origin.service.store.path(digest)]
    assert str(digest) not in await origin.force_cleanup(0)  # seeded (and write-back pending)
