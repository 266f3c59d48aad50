"""The tracker as a real process (``python -m kraken tracker``) in front of a real origin and
testfs, with libtorrent as its client: metainfo proxied (200 cached, 404, 202 while the
origin fetches from its backend, one origin call for concurrent requests), and downloads
that find their seeder through the tracker, either an announcing agent or the owning origin."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import libtorrent as lt
import pytest

from kraken.core.digest import Digest
from kraken.core.metainfo import generate_metainfo
from kraken.devcluster import CONFIG_ROOT, Process, Supervisor, free_port, write_overlay
from kraken.http.client import create_client
from kraken.http.config import HttpClientConfig
from kraken.origin.client import OriginClient
from tests.support.metrics import metric
from tests.support.origin import MB, NS, Testfs, origin_settings, random_blob
from tests.support.waiting import until

METAINFO_ROUTE = "/internal/namespace/{ns}/blobs/{digest}/metainfo"


@pytest.fixture(scope="module")
def origin_p2p_port() -> int:
    """Where the tracker says the origin seeds; the test that needs a seeder there starts one."""
    return free_port()


@pytest.fixture(scope="module")
def origin_proc(supervisor: Supervisor, testfs_port: int, tmp_path_factory: pytest.TempPathFactory) -> Process:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    root = tmp_path_factory.mktemp("origin")
    config = write_overlay(root / "origin.yaml", CONFIG_ROOT / "origin" / "development.yaml",
                           origin_settings(root / "store", port, testfs_port))
    return supervisor.start(Process("origin", "origin", port, config, supervisor.log_dir / "origin.log",
                                    extra_args=["--host", "127.0.0.1", "--advertise", addr]))


@pytest.fixture(scope="module")
def tracker_proc(supervisor: Supervisor, origin_proc: Process, origin_p2p_port: int,
                 tmp_path_factory: pytest.TempPathFactory) -> Process:
    port = free_port()
    config = write_overlay(tmp_path_factory.mktemp("tracker") / "tracker.yaml",
                           CONFIG_ROOT / "tracker" / "development.yaml", {
                               "origins": {"hosts": [origin_proc.addr], "max_replica": 1},
                               "origin_p2p": {origin_proc.addr: f"127.0.0.1:{origin_p2p_port}"},
                               "announce_interval": "1s",
                               # Pass the origin's first 202 on at once: a small blob's fetch from
                               # testfs would otherwise end within the wait, and the answer be 200.
                               "metainfo": {"poll_timeout": "0s"},
                           })
    return supervisor.start(Process("tracker", "tracker", port, config, supervisor.log_dir / "tracker.log",
                                    extra_args=["--host", "127.0.0.1"]))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


@pytest.fixture
async def origin(origin_proc: Process) -> AsyncIterator[OriginClient]:
    http = create_client(HttpClientConfig(connect_timeout=2, read_timeout=10))
    yield OriginClient(origin_proc.addr, http, poll_timeout=20)
    await http.close()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as resp:
        return resp.status, await resp.read()


def metainfo_url(tracker: Process, digest: Digest) -> str:
    return f"{tracker.url}/namespace/test%2Fx/blobs/{digest}/metainfo"


async def origin_metainfo_calls(session: aiohttp.ClientSession, origin: Process, status: str = "200") -> float:
    text = (await get(session, f"{origin.url}/metrics"))[1].decode()
    return metric(text, "kraken_http_requests_total", 0, method="GET", route=METAINFO_ROUTE, status=status)


# ---- metainfo ------------------------------------------------------------------------------


async def test_tracker_is_ready_with_its_origin(tracker_proc: Process, session: aiohttp.ClientSession) -> None:
    assert await get(session, f"{tracker_proc.url}/readiness") == (200, b"OK\n")


async def test_metainfo_comes_from_the_origin_once_then_from_the_cache(
    tracker_proc: Process, origin_proc: Process, origin: OriginClient, session: aiohttp.ClientSession,
) -> None:
    data, digest = random_blob(3 * MB)
    await origin.upload_bytes(NS, digest, data)
    before = await origin_metainfo_calls(session, origin_proc)
    answers = [await get(session, metainfo_url(tracker_proc, digest)) for _ in range(3)]
    assert await origin_metainfo_calls(session, origin_proc) - before == 1
    assert answers == [(200, await origin.get_metainfo(NS, digest))] * 3
    ti = lt.torrent_info(answers[0][1])
    assert (ti.name(), ti.total_size()) == (digest.hex, len(data))


async def test_missing_blob_is_404(tracker_proc: Process, session: aiohttp.ClientSession) -> None:
    _, digest = random_blob(10)
    assert (await get(session, metainfo_url(tracker_proc, digest)))[0] == 404


async def test_202_while_the_origin_fetches_from_its_backend(
    tracker_proc: Process, origin_proc: Process, origin: OriginClient, testfs_port: int,
    session: aiohttp.ClientSession,
) -> None:
    data, digest = random_blob(2 * MB)
    await origin.upload_bytes(NS, digest, data)
    await until(lambda: Testfs(testfs_port, session).exists(digest), what="write-back")

    async def evicted() -> bool:
        async with session.post(f"{origin_proc.url}/forcecleanup", params={"ttl_hr": "0"}) as resp:
            return str(digest) in (await resp.json())["evicted"]

    await until(evicted, what="eviction")
    status, body = await get(session, metainfo_url(tracker_proc, digest))
    assert status == 202 and b"being fetched" in body

    async def ready() -> bytes | None:
        status, body = await get(session, metainfo_url(tracker_proc, digest))
        return body if status == 200 else None

    assert lt.torrent_info(await until(ready, what="metainfo once fetched")).total_size() == len(data)


async def test_concurrent_requests_share_one_origin_call(
    tracker_proc: Process, origin_proc: Process, origin: OriginClient, session: aiohttp.ClientSession,
) -> None:
    data, digest = random_blob(4 * MB)
    await origin.upload_bytes(NS, digest, data)
    before = await origin_metainfo_calls(session, origin_proc)
    answers = await asyncio.gather(*(get(session, metainfo_url(tracker_proc, digest)) for _ in range(8)))
    assert {status for status, _ in answers} == {200} and len({body for _, body in answers}) == 1
    assert await origin_metainfo_calls(session, origin_proc) - before == 1


# ---- libtorrent as the tracker's client ----------------------------------------------------

ALERTS = lt.alert.category_t.error_notification | lt.alert.category_t.tracker_notification


@pytest.fixture
def lt_session() -> Iterator[Callable[[int], lt.session]]:
    """libtorrent sessions on 127.0.0.1 with the settings a Kraken agent needs (see
    docs: multiple connections per IP, TCP only, no DHT/LSD/UPnP/NAT-PMP, 1 s announces)."""
    sessions: list[lt.session] = []

    def make(port: int) -> lt.session:
        ses = lt.session({
            "listen_interfaces": f"127.0.0.1:{port}",
            "allow_multiple_connections_per_ip": True,
            "enable_outgoing_utp": False, "enable_incoming_utp": False,
            "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
            "min_announce_interval": 1,
            "alert_mask": ALERTS,
        })
        sessions.append(ses)
        return ses

    yield make
    sessions.clear()  # each session shuts down (blocking, briefly) as its last reference goes


def add_torrent(ses: lt.session, metainfo: bytes, save_path: Path, tracker: str | None,
                seed: bool = False) -> lt.torrent_handle:
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(metainfo)
    atp.save_path = str(save_path)
    if tracker is not None:
        atp.trackers = [tracker]
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    if seed:
        atp.flags |= lt.torrent_flags.seed_mode
    return ses.add_torrent(atp)


async def wait_seeding(handle: lt.torrent_handle, *sessions: lt.session) -> None:
    def progress() -> str:
        alerts = [a.message() for ses in sessions for a in ses.pop_alerts()]
        return f"download incomplete ({handle.status().progress:.0%}); alerts: {alerts}"

    await until(lambda: handle.status().is_seeding, timeout=30, what="the download", details=progress)


async def test_libtorrent_finds_an_announcing_seeder_through_the_tracker(
    tracker_proc: Process, lt_session: Callable[[int], lt.session], tmp_path: Path,
) -> None:
    data, digest = random_blob(3 * MB + 17)
    seed_dir, download_dir = tmp_path / "seed", tmp_path / "download"
    seed_dir.mkdir()
    (seed_dir / digest.hex).write_bytes(data)
    metainfo = await asyncio.to_thread(generate_metainfo, seed_dir / digest.hex, digest.hex, MB)
    announce = f"{tracker_proc.url}/announce"

    seeder, downloader = lt_session(free_port()), lt_session(free_port())
    add_torrent(seeder, metainfo, seed_dir, announce, seed=True)
    handle = add_torrent(downloader, metainfo, download_dir, announce)
    await wait_seeding(handle, seeder, downloader)
    assert (download_dir / digest.hex).read_bytes() == data


async def test_libtorrent_is_offered_the_owning_origin(
    tracker_proc: Process, origin: OriginClient, origin_p2p_port: int, lt_session: Callable[[int], lt.session],
    session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    """The "origin" seeder never announces: the downloader can only learn of it from the
    tracker, which maps the metainfo it served to the blob's owner and its P2P address."""
    data, digest = random_blob(3 * MB)
    await origin.upload_bytes(NS, digest, data)
    status, metainfo = await get(session, metainfo_url(tracker_proc, digest))
    assert status == 200
    seed_dir, download_dir = tmp_path / "seed", tmp_path / "download"
    seed_dir.mkdir()
    (seed_dir / digest.hex).write_bytes(data)

    seeder, downloader = lt_session(origin_p2p_port), lt_session(free_port())
    add_torrent(seeder, metainfo, seed_dir, tracker=None, seed=True)
    handle = add_torrent(downloader, metainfo, download_dir, f"{tracker_proc.url}/announce")
    await wait_seeding(handle, seeder, downloader)
    assert (download_dir / digest.hex).read_bytes() == data
    text = (await get(session, f"{tracker_proc.url}/metrics"))[1].decode()
    assert metric(text, "kraken_tracker_peers_returned_total", **{"class": "origin"}) >= 1
