"""The libtorrent session wrapper, moving real bytes between real sessions over loopback.

Peers find each other through a minimal in-test tracker (tests/support/p2p.py) until the
real tracker exists. Waits poll a condition with a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kraken.config import ConfigError, ListenConfig, build
from kraken.core.metainfo import info_hash
from kraken.metrics import Metrics
from kraken.p2p import DownloadError, DownloadTimeout, P2PConfig, P2PError, P2PSession
from tests.support.p2p import (
    AnnounceTrackerForTests,
    KiB,
    MiB,
    SessionFactory,
    loopback_config,
    make_blob,
    running_tracker,
    sha256_file,
)
from tests.support.waiting import until as wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def tracker() -> AsyncIterator[AnnounceTrackerForTests]:
    async with running_tracker() as t:
        yield t


@pytest.fixture
async def new_session(tracker: AnnounceTrackerForTests) -> AsyncIterator[SessionFactory]:
    """Starts sessions on loopback; closes them (before the tracker stops) after the test."""
    opened: list[P2PSession] = []

    async def make(*, role: str = "agent", metrics: Metrics | None = None, **config: object) -> P2PSession:
        session = await P2PSession.start(loopback_config(**config), metrics or Metrics("p2p-test"), role=role)
        opened.append(session)
        return session

    yield make
    for session in opened:
        await session.close()


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def log_records(caplog: pytest.LogCaptureFixture, message: str) -> list[dict]:
    """The key=value fields of every ``p2p`` log line with this message."""
    return [r.kraken_fields for r in caplog.records if r.name == "p2p" and r.getMessage() == message]


def test_config_accepts_config_file_values_and_rejects_bad_ones() -> None:
    cfg = build(
        P2PConfig,
        {
            "listen": {"host": "0.0.0.0", "port": 16001},
            "upload_rate_limit": "2MB",
            "seed_idle_time": "5m",
            "min_announce_interval": "2s",
            "max_queued_disk_bytes": "16MB",
        },
    )
    assert cfg.upload_rate_limit == 2 * MiB
    assert cfg.download_rate_limit == 0
    assert cfg.seed_idle_time == 300.0
    assert cfg.listen_interfaces() == "0.0.0.0:16001"
    assert P2PConfig(listen=ListenConfig(host="::1", port=0)).listen_interfaces() == "[::1]:0"
    for bad in ({"connections_per_torrent": 1}, {"min_announce_interval": "500ms"}, {"upload_rate_limit": "3GB"}):
        with pytest.raises(ConfigError):
            build(P2PConfig, bad)


async def test_one_origin_three_agents_get_identical_bytes(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2p")
    blob = make_blob(tmp_path / "origin", 6 * MiB)
    origin = await new_session(role="origin")
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    agents = [await new_session() for _ in range(3)]

    results = await asyncio.gather(
        *(a.download(blob.metainfo, tmp_path / f"agent{i}", tracker.url, timeout=30) for i, a in enumerate(agents))
    )

    for i, (agent, result) in enumerate(zip(agents, results, strict=True)):
        assert result.path == tmp_path / f"agent{i}" / blob.path.name
        assert result.path.read_bytes() == blob.data
        assert sha256_file(result.path) == blob.sha256
        assert result.size == len(blob.data)
        assert result.downloaded >= result.size
        assert sum(result.downloaded_by_source.values()) == result.downloaded
        assert agent.torrents() == {result.info_hash: result.path}  # still seeding
    added = log_records(caplog, "Added new torrent")
    assert {f["mode"] for f in added} == {"seed", "download"}
    assert all(f["info_hash"] == info_hash(blob.metainfo) and f["size"] == 6 * MiB for f in added)
    assert log_records(caplog, "peer connected")
    complete = log_records(caplog, "Torrent complete")
    assert len(complete) == 3
    assert {"name", "size", "seconds", "downloaded", "from_origin", "from_peers", "uploaded"} <= set(complete[0])


async def test_file_is_complete_on_disk_the_moment_download_returns(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    # Hashing at torrent_finished (before cache_flushed) gave wrong digests in 10-20% of runs.
    blobs = [make_blob(tmp_path / "origin", n) for n in (1, 1000, 256 * KiB + 1, MiB, 3 * MiB + 17, 5 * MiB)]
    origin = await new_session(role="origin")
    for blob in blobs:
        await origin.seed(blob.metainfo, blob.path, tracker.url)
    async def fetch_and_hash(agent: P2PSession, blob_metainfo: bytes, save_dir: Path) -> str:
        result = await agent.download(blob_metainfo, save_dir, tracker.url, timeout=30)
        return sha256_file(result.path)  # synchronously, before anything else runs

    for attempt in range(3):
        agent = await new_session()
        digests = await asyncio.gather(
            *(fetch_and_hash(agent, b.metainfo, tmp_path / f"attempt{attempt}") for b in blobs)
        )
        assert digests == [b.sha256 for b in blobs]


async def test_download_in_a_separate_process_leaves_no_threads_or_descriptors(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", 4 * MiB)
    seeder = await new_session()
    await seeder.seed(blob.metainfo, blob.path, tracker.url)
    metainfo_file = tmp_path / "metainfo"
    metainfo_file.write_bytes(blob.metainfo)

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.p2p", "download",
        "--metainfo", str(metainfo_file), "--save-dir", str(tmp_path / "remote"), "--tracker", tracker.url,
        "--origin", f"127.0.0.1:{seeder.listen_port}",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)

    assert report["sha256"] == blob.sha256
    assert (tmp_path / "remote" / blob.path.name).read_bytes() == blob.data
    # The seeder's listen address was named as an origin's: all its bytes count as origin.
    assert report["downloaded_by_source"] == {"origin": 4 * MiB, "peer": 0}
    assert report["threads_after"] == report["threads_before"]
    assert report["fds_after"] == report["fds_before"]


@pytest.mark.parametrize("side", ["upload", "download"])
async def test_rate_limit_applies_on_loopback(
    side: str, tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    # libtorrent exempts loopback and private ranges from rate limits unless peer classes are remapped.
    cap = 2 * MiB
    blob = make_blob(tmp_path / "origin", 6 * MiB)
    origin = await new_session(role="origin", upload_rate_limit=cap if side == "upload" else 0)
    agent = await new_session(download_rate_limit=cap if side == "download" else 0)
    await origin.seed(blob.metainfo, blob.path, tracker.url)

    result = await agent.download(blob.metainfo, tmp_path / "agent", tracker.url, timeout=60)

    assert sha256_file(result.path) == blob.sha256
    assert result.seconds >= 2.5, f"{result.seconds:.2f}s: the {side} limit did not apply"
    assert result.size / result.seconds <= cap * 1.3


async def test_corrupt_peer_costs_hash_failures_but_the_download_is_correct(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", 2 * MiB, piece_length=64 * KiB)
    origin = await new_session(role="origin", upload_rate_limit=MiB)  # slow: the victim asks the bad peer too
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    # The bad agent finds a complete copy in its staging dir (libtorrent checks it at add, no
    # peer needed), then its copy rots on disk while it keeps seeding: it serves garbage.
    bad = await new_session()
    (tmp_path / "bad").mkdir()
    shutil.copy(blob.path, tmp_path / "bad" / blob.path.name)
    checked = await bad.download(blob.metainfo, tmp_path / "bad", tracker.url, timeout=30)
    assert checked.downloaded == 0
    checked.path.write_bytes(os.urandom(blob.path.stat().st_size))

    victim_metrics = Metrics("victim")
    victim = await new_session(metrics=victim_metrics)
    result = await victim.download(blob.metainfo, tmp_path / "victim", tracker.url, timeout=60)

    assert sha256_file(result.path) == blob.sha256
    assert result.hash_failures >= 1
    assert metric(victim_metrics, "kraken_p2p_hash_failures_total") == result.hash_failures
    assert result.downloaded > result.size  # the failed pieces were fetched twice


async def test_corrupt_file_in_seed_mode_stops_seeding_and_serves_nothing_bad(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", 2 * MiB, piece_length=64 * KiB)
    origin = await new_session(role="origin", upload_rate_limit=MiB)
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    rotten = tmp_path / "rotten" / blob.path.name
    rotten.parent.mkdir()
    rotten.write_bytes(os.urandom(len(blob.data)))
    rotten_metrics = Metrics("rotten")
    rotten_seeder = await new_session(metrics=rotten_metrics)
    await rotten_seeder.seed(blob.metainfo, rotten, tracker.url)

    agent = await new_session()
    result = await agent.download(blob.metainfo, tmp_path / "agent", tracker.url, timeout=60)

    # Seed mode hashes each piece on its first request: the rotten seeder caught its own file.
    assert sha256_file(result.path) == blob.sha256
    assert result.hash_failures == 0
    assert rotten_seeder.torrents() == {}
    assert metric(rotten_metrics, "kraken_p2p_hash_failures_total") >= 1


async def test_timeout_raises_and_removes_the_torrent_and_its_partial_file(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    # Small pieces, so the partial file shows up within a second at this rate.
    blob = make_blob(tmp_path / "origin", 4 * MiB, piece_length=16 * KiB)
    origin = await new_session(role="origin", upload_rate_limit=128 * KiB)
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    metrics = Metrics("agent")
    agent = await new_session(metrics=metrics)
    partial = tmp_path / "staging" / blob.path.name

    download = asyncio.create_task(agent.download(blob.metainfo, tmp_path / "staging", tracker.url, timeout=3.0))
    await wait_until(partial.exists, timeout=5, what="the partial file")
    with pytest.raises(DownloadTimeout) as raised:
        await download

    assert isinstance(raised.value, TimeoutError)
    assert agent.torrents() == {}
    assert not partial.exists()
    assert metric(metrics, "kraken_p2p_active_torrents") == 0
    assert metric(metrics, "kraken_p2p_downloads_total", result="timeout") == 1


async def test_a_cancelled_download_is_dropped_with_its_partial_file(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", 4 * MiB, piece_length=16 * KiB)
    origin = await new_session(role="origin", upload_rate_limit=128 * KiB)
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    agent = await new_session()
    partial = tmp_path / "staging" / blob.path.name

    download = asyncio.create_task(agent.download(blob.metainfo, tmp_path / "staging", tracker.url, timeout=60))
    await wait_until(partial.exists, timeout=5, what="the partial file")
    download.cancel()
    with pytest.raises(asyncio.CancelledError):
        await download

    assert agent.torrents() == {}
    await wait_until(lambda: not partial.exists(), timeout=5, what="the partial file to be deleted")


async def test_unwritable_save_dir_raises_download_error(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", MiB)
    origin = await new_session(role="origin")
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    metrics = Metrics("agent")
    agent = await new_session(metrics=metrics)

    with pytest.raises(DownloadError, match="failed"):
        await agent.download(blob.metainfo, not_a_dir / "staging", tracker.url, timeout=30)

    assert agent.torrents() == {}
    assert metric(metrics, "kraken_p2p_downloads_total", result="error") == 1


async def test_tracker_errors_are_warnings_and_not_fatal(
    tmp_path: Path, new_session: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2p")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]  # nothing listens there once the socket closes
    blob = make_blob(tmp_path / "origin", MiB)
    session = await new_session()

    info = await session.seed(blob.metainfo, blob.path, f"http://127.0.0.1:{dead_port}/announce")

    await wait_until(lambda: bool(log_records(caplog, "tracker error")), timeout=10, what="a tracker error")
    assert {r.levelno for r in caplog.records if r.getMessage() == "tracker error"} == {logging.WARNING}
    assert session.torrents() == {info: blob.path}


async def test_idle_seeds_are_removed_after_seed_idle_time(
    tmp_path: Path,
    tracker: AnnounceTrackerForTests,
    new_session: SessionFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p2p")
    blob = make_blob(tmp_path / "origin", MiB)
    origin = await new_session(role="origin", seed_idle_time=0.5)
    agent = await new_session(seed_idle_time=0.5)
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    result = await agent.download(blob.metainfo, tmp_path / "agent", tracker.url, timeout=30)
    completed = time.monotonic()

    await wait_until(lambda: not agent.torrents() and not origin.torrents(), timeout=10, what="idle removal")

    assert time.monotonic() - completed >= 0.5
    assert result.path.exists() and blob.path.exists()  # removal from the session leaves files alone
    assert [f["reason"] for f in log_records(caplog, "torrent removed")] == ["idle", "idle"]


async def test_close_is_prompt_fails_pending_downloads_and_closes_the_alert_pipe(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", 4 * MiB)
    origin = await new_session(role="origin", upload_rate_limit=64 * KiB)
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    agent = await P2PSession.start(loopback_config(), Metrics("closing"))
    rfd, wfd = agent.alert_fds
    pipe = [os.fstat(fd).st_ino for fd in (rfd, wfd)]
    download = asyncio.create_task(agent.download(blob.metainfo, tmp_path / "agent", tracker.url, timeout=60))
    await wait_until(lambda: bool(agent.torrents()), what="the download to start")
    announces = tracker.announces

    started = time.monotonic()
    await agent.close()
    # The stopped announces are sent while the loop runs: the in-process tracker answered them
    # (the session's destructor would have held the GIL for stop_tracker_timeout).
    assert time.monotonic() - started < 1.0
    assert tracker.announces > announces

    with pytest.raises(DownloadError, match="closed"):
        await download
    for fd, inode in zip((rfd, wfd), pipe, strict=True):
        try:
            same_pipe = os.fstat(fd).st_ino == inode
        except OSError:
            same_pipe = False
        assert not same_pipe, f"alert pipe fd {fd} still open"
    await agent.close()  # idempotent
    with pytest.raises(P2PError):
        await agent.seed(blob.metainfo, blob.path, tracker.url)


async def test_metrics_split_downloaded_bytes_between_origin_and_peers(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", 4 * MiB, piece_length=64 * KiB)
    origin_metrics, peer_metrics, agent_metrics = Metrics("origin"), Metrics("peer"), Metrics("agent")
    origin = await new_session(role="origin", upload_rate_limit=MiB, metrics=origin_metrics)
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    peer = await new_session(upload_rate_limit=MiB, metrics=peer_metrics)  # an agent that already has it
    (tmp_path / "peer").mkdir()
    shutil.copy(blob.path, tmp_path / "peer" / blob.path.name)
    await peer.download(blob.metainfo, tmp_path / "peer", tracker.url, timeout=30)
    agent = await new_session(metrics=agent_metrics)

    result = await agent.download(blob.metainfo, tmp_path / "agent", tracker.url, timeout=60)

    assert sha256_file(result.path) == blob.sha256
    from_origin, from_peer = result.downloaded_by_source["origin"], result.downloaded_by_source["peer"]
    assert from_origin + from_peer == result.downloaded
    assert from_origin > 0.2 * len(blob.data)
    assert from_peer > 0.2 * len(blob.data)
    assert metric(agent_metrics, "kraken_p2p_download_bytes_total", source="origin") == from_origin
    assert metric(agent_metrics, "kraken_p2p_download_bytes_total", source="peer") == from_peer
    assert metric(agent_metrics, "kraken_p2p_download_seconds_count") == 1
    assert metric(agent_metrics, "kraken_p2p_active_torrents") == 1
    # The sources' own upload counters (exact) agree with the attribution.
    await wait_until(
        lambda: metric(origin_metrics, "kraken_p2p_upload_bytes_total")
        + metric(peer_metrics, "kraken_p2p_upload_bytes_total")
        >= result.downloaded,
        what="upload counters",
    )
    origin_uploaded = metric(origin_metrics, "kraken_p2p_upload_bytes_total")
    assert abs(origin_uploaded - from_origin) <= 0.05 * len(blob.data)


async def test_origin_addresses_classify_a_seeder_as_origin(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "seeder", 2 * MiB)
    seeder = await new_session()  # an agent-role session: no origin peer id
    await seeder.seed(blob.metainfo, blob.path, tracker.url)
    plain, told = await new_session(), await new_session()
    told.set_origin_addresses({f"127.0.0.1:{seeder.listen_port}"})

    r_plain = await plain.download(blob.metainfo, tmp_path / "plain", tracker.url, timeout=30)
    await plain.remove(r_plain.info_hash)  # only the seeder serves the second agent
    r_told = await told.download(blob.metainfo, tmp_path / "told", tracker.url, timeout=30)

    assert r_plain.downloaded_by_source == {"origin": 0, "peer": 2 * MiB}
    assert r_told.downloaded_by_source == {"origin": 2 * MiB, "peer": 0}


async def test_move_storage_keeps_seeding_from_the_new_place(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", 3 * MiB)
    origin = await new_session(role="origin")
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    agent = await new_session()
    staged = await agent.download(blob.metainfo, tmp_path / "staging", tracker.url, timeout=30)
    assert sha256_file(staged.path) == blob.sha256

    cached = await agent.move_storage(staged.info_hash, tmp_path / "cache")

    assert cached == tmp_path / "cache" / blob.path.name
    assert cached.read_bytes() == blob.data and not staged.path.exists()
    assert agent.torrents() == {staged.info_hash: cached}
    await origin.remove(staged.info_hash)  # the agent's cache copy is now the only source
    other = await new_session()
    result = await other.download(blob.metainfo, tmp_path / "other", tracker.url, timeout=30)
    assert sha256_file(result.path) == blob.sha256
    assert result.downloaded_by_source["peer"] == len(blob.data)


async def test_seed_is_idempotent_checks_the_file_and_may_use_another_file_name(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", MiB)
    session = await new_session(role="origin")
    first = await session.seed(blob.metainfo, blob.path, tracker.url)
    assert await session.seed(blob.metainfo, blob.path, tracker.url) == first == info_hash(blob.metainfo)
    assert session.torrents() == {first: blob.path}

    short = tmp_path / "short"
    short.write_bytes(blob.data[:-1])
    with pytest.raises(ValueError, match="bytes"):
        await session.seed(blob.metainfo, short, tracker.url)
    with pytest.raises(ValueError, match="invalid metainfo"):
        await session.seed(b"not bencoded", blob.path, tracker.url)
    with pytest.raises(FileNotFoundError):
        await session.seed(blob.metainfo, tmp_path / "missing", tracker.url)

    await session.remove(first)
    data_file = tmp_path / "cache" / "data"
    data_file.parent.mkdir()
    shutil.copy(blob.path, data_file)
    assert await session.seed(blob.metainfo, data_file, tracker.url) == first
    assert session.torrents() == {first: data_file}
    agent = await new_session()
    result = await agent.download(blob.metainfo, tmp_path / "agent", tracker.url, timeout=30)
    assert result.path.name == blob.path.name and sha256_file(result.path) == blob.sha256


async def test_concurrent_calls_share_one_download_and_one_may_time_out(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", 2 * MiB)
    origin = await new_session(role="origin", upload_rate_limit=MiB)
    await origin.seed(blob.metainfo, blob.path, tracker.url)
    agent = await new_session()

    patient = asyncio.create_task(agent.download(blob.metainfo, tmp_path / "a", tracker.url, timeout=60))
    impatient = asyncio.create_task(agent.download(blob.metainfo, tmp_path / "a", tracker.url, timeout=0.3))
    with pytest.raises(DownloadTimeout):
        await impatient
    result = await patient

    assert sha256_file(result.path) == blob.sha256
    again = await agent.download(blob.metainfo, tmp_path / "elsewhere", tracker.url, timeout=1)
    assert (again.path, again.seconds, again.downloaded) == (result.path, 0.0, 0)
    assert len(agent.torrents()) == 1


async def test_alert_queue_overflow_does_not_lose_downloads(
    tmp_path: Path,
    tracker: AnnounceTrackerForTests,
    new_session: SessionFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p2p")
    blobs = [make_blob(tmp_path / "origin", n * MiB) for n in (1, 2, 3)]
    origin = await new_session(role="origin")
    for blob in blobs:
        await origin.seed(blob.metainfo, blob.path, tracker.url)
    agent = await new_session(alert_queue_size=1)

    results = await asyncio.gather(
        *(agent.download(b.metainfo, tmp_path / "agent", tracker.url, timeout=30) for b in blobs)
    )

    assert [sha256_file(r.path) for r in results] == [b.sha256 for b in blobs]
    assert any(r.getMessage().startswith("libtorrent alert queue overflowed") for r in caplog.records)


async def test_a_taken_listen_port_or_a_shared_metrics_registry_fails_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(P2PError, match="cannot listen"):
            await P2PSession.start(loopback_config(listen=ListenConfig(host="127.0.0.1", port=port)), Metrics("x"))
    metrics = Metrics("shared")
    first = await P2PSession.start(loopback_config(), metrics)
    try:
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            await P2PSession.start(loopback_config(), metrics)
    finally:
        await first.close()


async def test_a_single_piece_blob_offered_by_two_seeders_is_downloaded_once(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    origin, peer = await new_session(role="origin"), await new_session()
    for size in (289, 40 * KiB + 7):  # one block (a manifest) and three blocks of one piece
        blob = make_blob(tmp_path / f"origin{size}", size, piece_length=4 * MiB)
        await origin.seed(blob.metainfo, blob.path, tracker.url)
        await peer.download(blob.metainfo, tmp_path / f"peer{size}", tracker.url, timeout=30)
        agent = await new_session()

        result = await agent.download(blob.metainfo, tmp_path / f"agent{size}", tracker.url, timeout=30)

        assert result.path.read_bytes() == blob.data
        assert result.downloaded == size, result.downloaded_by_source
        # Complete, it seeds to as many peers at once as any torrent.
        handle = agent._torrents.require(result.info_hash).handle
        assert await asyncio.to_thread(handle.max_connections) == agent.config.connections_per_torrent


async def test_a_single_piece_download_whose_first_peer_is_silent_opens_to_the_others(
    tmp_path: Path, tracker: AnnounceTrackerForTests, new_session: SessionFactory
) -> None:
    blob = make_blob(tmp_path / "origin", 289, piece_length=4 * MiB)
    ih = bytes.fromhex(info_hash(blob.metainfo))
    # Peers that accept connections and never answer: libtorrent waits 10 s for a handshake.
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(5)]
    try:
        tracker.swarms[ih] = {("127.0.0.1", s.getsockname()[1]): 0 for s in silent}
        origin = await new_session(role="origin")
        await origin.seed(blob.metainfo, blob.path, tracker.url)
        agent = await new_session()
        started = time.monotonic()
        result = await agent.download(blob.metainfo, tmp_path / "agent", tracker.url, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        for s in silent:
            s.close()
    assert result.path.read_bytes() == blob.data
    assert elapsed < 5, f"{elapsed:.1f}s"
