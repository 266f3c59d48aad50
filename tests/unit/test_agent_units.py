"""Agent pieces without processes: config and flags, metainfo checks, cache eviction."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kraken.agent.__main__ import apply_arguments
from kraken.agent.blobs import METAINFO_META, AgentBlobs, BlobUnavailable, parse_metainfo
from kraken.agent.cleanup import CacheCleanup, victim_rule
from kraken.agent.config import AgentConfig, CleanupConfig
from kraken.cli import build_parser
from kraken.config import ConfigError, build, load_config
from kraken.core.digest import Digest
from kraken.core.metainfo import generate_metainfo, info_hash
from kraken.metrics import Metrics
from kraken.store.cas import CAStore
from kraken.store.eviction import evict, scan

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_configs_load_with_the_documented_ports() -> None:
    one = load_config(AgentConfig, REPO / "config/agent/development.yaml")
    assert (one.listen.port, one.p2p.listen.port, one.server.port) == (16000, 16001, 16002)
    assert (one.tracker.addr, one.build_index.addr) == ("localhost:15003", "localhost:15004")
    two = load_config(AgentConfig, REPO / "config/agent/development-two.yaml")
    assert (two.listen.port, two.p2p.listen.port, two.server.port) == (17000, 17001, 17002)
    assert one.store.root != two.store.root
    with pytest.raises(ConfigError):
        build(AgentConfig, {"store": {"root": "/x"}, "cleanup": {"tti": "-1s"}})


def test_flags_override_ports_and_peer_ip() -> None:
    args = build_parser("agent").parse_args(
        ["agent", "--config", "x", "--port", "17000", "--server-port", "17002", "--peer-port", "17001",
         "--peer-ip", "10.1.2.3"]
    )
    config = build(AgentConfig, {"store": {"root": "/x"}})
    config.listen.port = args.port
    apply_arguments(config, args)
    assert (config.listen.port, config.server.port, config.p2p.listen.port) == (17000, 17002, 17001)
    assert config.p2p.peer_ip == "10.1.2.3"
    defaults = apply_arguments(
        build(AgentConfig, {"store": {"root": "/x"}}), build_parser("agent").parse_args(["agent"]))
    assert (defaults.server.port, defaults.p2p.listen.port, defaults.p2p.peer_ip) == (16002, 16001, "")


def test_metainfo_must_be_one_file_named_after_the_digest(tmp_path: Path) -> None:
    data = os.urandom(1000)
    digest = Digest.of_bytes(data)
    path = tmp_path / "blob"
    path.write_bytes(data)
    good = generate_metainfo(path, digest.hex, 1 << 18)
    facts = parse_metainfo(good, digest)
    assert (facts.size, facts.info_hash) == (1000, info_hash(good))
    with pytest.raises(BlobUnavailable):
        parse_metainfo(generate_metainfo(path, "../" + digest.hex, 1 << 18), digest)
    with pytest.raises(BlobUnavailable):
        parse_metainfo(good, Digest.of_bytes(b"other"))
    with pytest.raises(BlobUnavailable):
        parse_metainfo(b"not bencoded", digest)


async def victims(store: CAStore, now: float, tti: float, threshold: int) -> list[Digest]:
    """What a sweep with the agent's rule evicts (deletes recorded, not done)."""
    deleted: list[Digest] = []

    async def record(digest: Digest) -> bool:
        deleted.append(digest)
        return True

    await evict(store, scan(store), victim_rule(now, tti, threshold), record)
    return deleted


async def test_victims_by_idle_time_then_least_recently_used_above_the_threshold(tmp_path: Path) -> None:
    store = CAStore(tmp_path / "store", durable=False)
    now = time.time()
    blobs = {}
    for name, age in ((b"old", 5000), (b"mid", 100), (b"new", 1)):
        data = name.ljust(10, b".")
        digest = Digest.of_bytes(data)
        await store.put_bytes(digest, data)
        os.utime(store.path(digest), (now - age, now - age))
        blobs[name] = digest
    old, mid = blobs[b"old"], blobs[b"mid"]
    assert await victims(store, now, tti=1000, threshold=0) == [old]
    assert await victims(store, now, tti=0, threshold=0) == []
    assert await victims(store, now, tti=0, threshold=15) == [old, mid]
    assert await victims(store, now, tti=1000, threshold=15) == [old, mid]
    assert await victims(store, now, tti=1000, threshold=100) == [old]


class RecordingSession:
    """Stands in for the P2P session: eviction only asks it to stop seeding."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    async def remove(self, info_hash: str, *, delete_files: bool = False) -> None:
        self.removed.append(info_hash)


async def test_sweep_evicts_only_idle_blobs_and_stops_seeding_them(tmp_path: Path) -> None:
    cas = CAStore(tmp_path / "store", durable=False)
    session = RecordingSession()
    blobs = AgentBlobs(cas, tmp_path / "store" / "download", session, None, 60.0, Metrics("t"))  # type: ignore[arg-type]
    idle, fresh = os.urandom(5000), os.urandom(5000)
    idle_d, fresh_d = Digest.of_bytes(idle), Digest.of_bytes(fresh)
    for data in (idle, fresh):
        await cas.put_bytes(Digest.of_bytes(data), data)
    source = tmp_path / "idle"
    source.write_bytes(idle)
    metainfo = generate_metainfo(source, idle_d.hex, 1 << 18)
    await cas.write_meta(idle_d, METAINFO_META, metainfo)
    past = time.time() - 7200
    os.utime(cas.path(idle_d), (past, past))
    stranger = tmp_path / "store" / "not-ours"  # something else on the disk: never counted or touched
    stranger.write_bytes(os.urandom(50_000))

    cleanup = CacheCleanup(blobs, CleanupConfig(tti=3600, disk_usage_threshold=6000), Metrics("t2"))
    assert await cleanup.sweep() == [idle_d]
    assert not cas.exists(idle_d) and cas.exists(fresh_d) and stranger.exists()
    assert session.removed == [info_hash(metainfo)]
    assert await cleanup.sweep() == []
