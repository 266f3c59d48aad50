"""The tracker over real sockets, in-process (aiohttp test server): the peer stores (memory
and a real redis-server, one suite for both), raw HTTP announces, and the metainfo proxy
against fake origins whose answers the tests control (real origins: test_tracker_origin.py)."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import libtorrent as lt
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from kraken.config import build
from kraken.core.digest import Digest
from kraken.core.metainfo import generate_metainfo, info_hash
from kraken.devcluster import free_port
from kraken.http.errors import json_error
from kraken.ring import HashRing
from kraken.tasks import TaskOwner
from kraken.tracker.config import ProbeConfig, TrackerConfig
from kraken.tracker.memstore import MemoryPeerStore
from kraken.tracker.peerstore import AnnounceRefused, Peer, PeerAddr, PeerStore, PeerStoreError
from kraken.tracker.probe import SeederProbe
from kraken.tracker.server import create_tracker_app
from kraken.tracker.service import open_store
from tests.support.metrics import metric
from tests.support.tracker import Answer, announce_query
from tests.support.waiting import until, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NS = "test/x"


# ---- redis-server --------------------------------------------------------------------------


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, without persistence, for this module."""
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    with open(workdir / "redis.log", "wb") as log:
        proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: _redis_answers(port), 15, message="redis-server to answer PING",
                   alive=lambda: None if proc.poll() is None else "redis-server exited",
                   details=(workdir / "redis.log").read_text)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["memory", "redis"])
def store_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config keys selecting each peer store; every test gets its own Redis key prefix."""
    if request.param == "memory":
        return {"store": "memory"}
    addr = request.getfixturevalue("redis_addr")
    return {"store": "redis", "redis": {"addr": addr, "key_prefix": f"test:{uuid.uuid4().hex}:"}}


def random_hash() -> bytes:
    return os.urandom(20)


def agent(n: int, complete: bool = False, ip: str = "127.0.0.1") -> Peer:
    return Peer(PeerAddr(ip, 20000 + n), f"-LT2110-{n:012d}".encode(), complete)


# ---- the peer store suite (memory and redis) -----------------------------------------------


@pytest.fixture
async def make_store(store_settings: dict[str, Any]) -> AsyncIterator[Callable[[float], Awaitable[PeerStore]]]:
    stores: list[PeerStore] = []

    async def make(ttl: float = 3600.0, **limits: int) -> PeerStore:
        config = build(TrackerConfig, {**store_settings, "announce_interval": ttl / 10, "peer_ttl": ttl,
                                       "limits": limits})
        store = open_store(config)
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def test_store_samples_each_class_with_counts(make_store: Callable[..., Awaitable[PeerStore]]) -> None:
    store = await make_store()
    ih = random_hash()
    s1, s2, l1 = agent(1, True), agent(2, True), agent(3)
    for p in (s1, s2, l1):
        await store.announce(ih, p, 10)
    me = agent(4)
    swarm = await store.announce(ih, me, 10)
    assert sorted(swarm.seeders, key=str) == sorted([s1, s2], key=str)  # peer_ids kept too
    assert sorted(swarm.leechers, key=str) == sorted([l1, me], key=str)
    assert (swarm.num_seeders, swarm.num_leechers, swarm.digest) == (2, 2, None)


async def test_store_moves_a_peer_between_classes(make_store: Callable[..., Awaitable[PeerStore]]) -> None:
    store = await make_store()
    ih = random_hash()
    await store.announce(ih, agent(1), 10)
    swarm = await store.announce(ih, agent(1, complete=True), 10)
    assert (swarm.num_seeders, swarm.num_leechers) == (1, 0)
    assert swarm.seeders == [agent(1, True)] and swarm.leechers == []


async def test_store_keys_peers_by_address(make_store: Callable[..., Awaitable[PeerStore]]) -> None:
    store = await make_store()
    ih = random_hash()
    await store.announce(ih, agent(1), 10)
    restarted = Peer(agent(1).addr, b"-LT2110-newpeeridxxx", False)  # peer_ids are random per torrent
    swarm = await store.announce(ih, restarted, 10)
    assert swarm.num_leechers == 1 and swarm.leechers == [restarted]


async def test_store_leave_forgets_the_peer(make_store: Callable[..., Awaitable[PeerStore]]) -> None:
    store = await make_store()
    ih = random_hash()
    await store.announce(ih, agent(1, True), 10)
    await store.announce(ih, agent(2), 10)
    swarm = await store.leave(ih, agent(1).addr)
    assert (swarm.num_seeders, swarm.num_leechers, swarm.seeders) == (0, 1, [])
    assert (await store.announce(ih, agent(2), 10)).seeders == []


async def test_store_sample_is_bounded_and_random(make_store: Callable[..., Awaitable[PeerStore]]) -> None:
    store = await make_store()
    ih = random_hash()
    for n in range(30):
        await store.announce(ih, agent(n, True), 0)
    samples = [await store.announce(ih, agent(99), 5) for _ in range(10)]
    assert all(len(s.seeders) == 5 == len(set(s.seeders)) and s.num_seeders == 30 for s in samples)
    assert len({frozenset(p.addr for p in s.seeders) for s in samples}) > 1


async def test_store_entries_expire(make_store: Callable[..., Awaitable[PeerStore]]) -> None:
    store = await make_store(ttl=0.5)
    ih = random_hash()
    await store.announce(ih, agent(1, True), 10)
    assert (await store.announce(ih, agent(2), 10)).num_seeders == 1

    async def gone() -> bool:
        swarm = await store.announce(ih, agent(2), 10)  # refreshes agent 2 only
        return swarm.num_seeders == 0 and swarm.seeders == [] and swarm.num_leechers == 1

    await until(gone, timeout=10, what="the silent seeder to expire")


async def test_store_remembers_the_digest_while_the_torrent_is_active(
    make_store: Callable[..., Awaitable[PeerStore]],
) -> None:
    store = await make_store(ttl=1.0)
    ih, other = random_hash(), random_hash()
    digest = Digest.of_bytes(b"blob")
    assert (await store.announce(ih, agent(1), 10)).digest is None
    await store.set_digest(ih, digest)
    assert (await store.announce(other, agent(1), 10)).digest is None
    end = time.monotonic() + 1.6  # well past the first TTL, with an announce every 0.1 s
    while time.monotonic() < end:
        assert (await store.announce(ih, agent(1), 10)).digest == digest
        await asyncio.sleep(0.1)


async def test_store_forgets_the_digest_of_a_silent_torrent(make_store: Callable[..., Awaitable[PeerStore]]) -> None:
    store = await make_store(ttl=0.3)
    ih = random_hash()
    await store.set_digest(ih, Digest.of_bytes(b"blob"))
    await asyncio.sleep(0.7)  # the expiry under test is a matter of time; any announce would refresh it
    assert (await store.announce(ih, agent(1), 10)).digest is None


async def test_store_keeps_ipv6_peers(make_store: Callable[..., Awaitable[PeerStore]]) -> None:
    store = await make_store()
    ih = random_hash()
    v6 = agent(1, True, ip="fd00::1")
    await store.announce(ih, v6, 10)
    assert (await store.announce(ih, agent(2), 10)).seeders == [v6]


async def test_store_keeps_the_latest_peers_of_an_address(make_store: Callable[..., Awaitable[PeerStore]]) -> None:
    store = await make_store(peers_per_ip=3)
    ih = random_hash()
    for n in range(10):
        await store.announce(ih, agent(n, True), 0)
    other = agent(20, True, ip="127.0.0.2")
    await store.announce(ih, other, 0)
    swarm = await store.announce(ih, agent(99, ip="127.0.0.3"), 20)
    assert (swarm.num_seeders, swarm.num_leechers) == (4, 1)
    assert {p.addr for p in swarm.seeders} == {agent(n).addr for n in (7, 8, 9)} | {other.addr}
    # An origin's address is not held to it.
    for n in range(5):
        await store.announce(ih, agent(40 + n, True, ip="127.0.0.4"), 0, exempt=True)
    assert (await store.announce(ih, agent(99, ip="127.0.0.3"), 0)).num_seeders == 4 + 5


async def test_store_refuses_torrents_beyond_the_address_and_total_limits(
    make_store: Callable[..., Awaitable[PeerStore]],
) -> None:
    store = await make_store(torrents_per_ip=3, torrents=5)
    hashes = [random_hash() for _ in range(6)]
    for ih in hashes[:3]:
        await store.announce(ih, agent(1), 0)
    with pytest.raises(AnnounceRefused) as refused:
        await store.announce(hashes[3], agent(2), 0)  # another port, the same address
    assert refused.value.scope == "ip" and "limit 3" in str(refused.value)
    await store.announce(hashes[0], agent(3, True), 0)  # torrents it already counts are fine
    await store.announce(hashes[3], agent(1, ip="127.0.0.2"), 0)
    await store.announce(hashes[3], agent(1), 0, exempt=True)  # an origin
    await store.announce(hashes[4], agent(1, ip="127.0.0.3"), 0)
    with pytest.raises(AnnounceRefused) as refused:
        await store.announce(hashes[5], agent(1, ip="127.0.0.4"), 0)
    assert refused.value.scope == "total" and "limit 5" in str(refused.value)
    assert (await store.announce(hashes[4], agent(2, ip="127.0.0.4"), 0)).num_leechers == 2


async def test_store_limits_count_only_live_torrents(make_store: Callable[..., Awaitable[PeerStore]]) -> None:
    store = await make_store(ttl=0.5, torrents_per_ip=1, torrents=1)
    await store.announce(random_hash(), agent(1), 0)
    with pytest.raises(AnnounceRefused):
        await store.announce(random_hash(), agent(1), 0)

    async def admitted() -> bool:
        try:
            await store.announce(random_hash(), agent(1), 0)
        except AnnounceRefused:
            return False
        return True

    await until(admitted, timeout=10, what="the first torrent to expire")


async def test_memory_store_sweeps_silent_torrents_away() -> None:
    store = MemoryPeerStore(ttl=0.1)
    await store.start()
    try:
        await store.announce(random_hash(), agent(1), 10)
        await store.set_digest(random_hash(), Digest.of_bytes(b"x"))
        await until(lambda: not store._torrents and not store._digests and not store._recent_by_ip,
                    timeout=10, what="the sweep")
    finally:
        await store.close()


async def test_seeder_probe_confirms_listening_seeders_once_per_ttl() -> None:
    connections: list[int] = []

    async def accepted(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    listening = PeerAddr("127.0.0.1", server.sockets[0].getsockname()[1])
    closed = PeerAddr("127.0.0.1", free_port())
    owner = TaskOwner("test-probe")
    probe = SeederProbe(ProbeConfig(ttl=0.5), owner)
    try:
        for addr in (listening, closed, listening):  # the second check of one address is a no-op
            probe.check(addr)
        await until(lambda: probe.confirmed(listening), what="the listening seeder to be confirmed")
        await until(lambda: connections, what="the probe's connection")
        probe.check(listening)  # answered within the TTL: not probed again
        assert not probe.confirmed(closed) and len(connections) == 1
        server.close()
        await server.wait_closed()

        def demoted() -> bool:  # once the answer is older than the TTL, an announce probes again
            probe.check(listening)
            return not probe.confirmed(listening)

        await until(demoted, timeout=10, what="the closed seeder to lose its confirmation")
    finally:
        server.close()
        await owner.close()


async def test_redis_store_down_raises_store_errors() -> None:
    config = build(TrackerConfig, {"store": "redis", "redis": {"addr": f"127.0.0.1:{free_port()}", "timeout": "1s"}})
    store = open_store(config)
    try:
        with pytest.raises(PeerStoreError):
            await store.ping()
        with pytest.raises(PeerStoreError):
            await store.announce(random_hash(), agent(1), 10)
        with pytest.raises(PeerStoreError):
            await store.set_digest(random_hash(), Digest.of_bytes(b"x"))
    finally:
        await store.close()


def _script_calls(addr: str) -> int:
    """EVAL/EVALSHA commands the redis-server at ``addr`` has run so far."""
    host, port = addr.rsplit(":", 1)
    with redis.Redis(host=host, port=int(port)) as client:
        stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha"))


async def test_redis_store_re_announce_is_one_round_trip(redis_addr: str) -> None:
    """The limits script runs for an (address, torrent) the tracker has not admitted lately;
    a refused one is asked again."""
    prefix = f"t:{uuid.uuid4().hex}:"
    config = build(TrackerConfig, {"store": "redis", "redis": {"addr": redis_addr, "key_prefix": prefix},
                                   "limits": {"torrents_per_ip": 1}})
    store = open_store(config)
    try:
        first, second = random_hash(), random_hash()
        await store.announce(first, agent(1), 10)
        before = _script_calls(redis_addr)
        await store.announce(first, agent(1), 10)
        await store.announce(first, agent(2), 10)  # same address and torrent: admitted already
        assert _script_calls(redis_addr) - before == 2
        for _ in range(2):
            with pytest.raises(AnnounceRefused):
                await store.announce(second, agent(1), 10)
        assert _script_calls(redis_addr) - before == 4
    finally:
        await store.close()


async def test_redis_store_queues_announces_beyond_its_connections(redis_addr: str) -> None:
    """More announces in flight than ``redis.max_connections`` wait for a connection (redis-py's
    own pool refused them beyond 100 with MaxConnectionsError)."""
    prefix = f"t:{uuid.uuid4().hex}:"
    config = build(TrackerConfig, {"store": "redis",
                                   "redis": {"addr": redis_addr, "key_prefix": prefix, "max_connections": 4}})
    store = open_store(config)
    try:
        ih = random_hash()
        swarms = await asyncio.gather(*(store.announce(ih, agent(n, ip=f"127.0.1.{n % 250}"), 1) for n in range(300)))
        assert max(s.num_leechers for s in swarms) == 300
    finally:
        await store.close()




def _noscript_replies(addr: str, flush: bool = False) -> int:
    """NOSCRIPT errors the redis-server at ``addr`` has answered so far; with ``flush``, first
    drop every script it knows, as a restarted server would have."""
    host, port = addr.rsplit(":", 1)
    with redis.Redis(host=host, port=int(port)) as client:
        if flush:
            client.script_flush()
        stats = client.info("errorstats")
    return int(stats.get("errorstat_NOSCRIPT", {}).get("count", 0))


async def test_redis_store_announces_in_flight_together_each_get_their_own_swarm(redis_addr: str) -> None:
    """Announces in flight at once go to Redis in shared pipelines, yet each gets its own
    swarm; scripts the server lost (as after a restart) are loaded again and those announces
    still succeed."""
    prefix = f"t:{uuid.uuid4().hex}:"
    config = build(TrackerConfig, {"store": "redis", "redis": {"addr": redis_addr, "key_prefix": prefix}})
    store = open_store(config)
    try:
        hashes = [random_hash() for _ in range(40)]
        first = await asyncio.gather(*(store.announce(h, agent(n), 10) for n, h in enumerate(hashes)))
        assert [s.num_leechers for s in first] == [1] * len(hashes)
        second = await asyncio.gather(*(store.announce(h, agent(100 + n), 10) for n, h in enumerate(hashes)))
        assert [{p.addr for p in s.leechers} for s in second] == [
            {agent(n).addr, agent(100 + n).addr} for n in range(len(hashes))]
        missed = _noscript_replies(redis_addr, flush=True)
        third = await asyncio.gather(*(store.announce(h, agent(200 + n), 10) for n, h in enumerate(hashes)))
        assert [s.num_leechers for s in third] == [3] * len(hashes)
        assert _noscript_replies(redis_addr) > missed  # the scripts were really gone
    finally:
        await store.close()

# ---- fake origins --------------------------------------------------------------------------


@dataclass
class FakeOrigin:
    """An origin's metainfo endpoint with canned answers; counts requests, can hold them."""

    server: TestServer | None = None
    metainfo: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None

    @property
    def addr(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    def app(self) -> web.Application:
        async def get_metainfo(request: web.Request) -> web.Response:
            digest = request.match_info["digest"]
            self.requests.append((request.match_info["ns"], digest))
            if self.gate is not None:
                await self.gate.wait()
            status = self.status.get(digest, 200 if digest in self.metainfo else 404)
            if status == 200:
                return web.Response(body=self.metainfo[digest], content_type="application/x-bittorrent")
            return json_error(status, f"fake origin says {status}")  # as a real origin answers

        async def health(_: web.Request) -> web.Response:
            return web.Response(text="OK\n")

        app = web.Application()
        app.router.add_get("/internal/namespace/{ns:.+}/blobs/{digest}/metainfo", get_metainfo)
        app.router.add_get("/health", health)
        return app


@dataclass
class Blob:
    data: bytes
    digest: Digest
    metainfo: bytes

    @property
    def info_hash(self) -> bytes:
        return bytes.fromhex(info_hash(self.metainfo))


def make_blob(tmp_path: Path, size: int = 100_000) -> Blob:
    data = os.urandom(size)
    digest = Digest.of_bytes(data)
    path = tmp_path / digest.hex
    path.write_bytes(data)
    return Blob(data, digest, generate_metainfo(path, digest.hex, 16 << 10))


@pytest.fixture
async def fake_origins() -> AsyncIterator[Callable[[int], Awaitable[list[FakeOrigin]]]]:
    servers: list[TestServer] = []

    async def start(n: int) -> list[FakeOrigin]:
        origins = []
        for _ in range(n):
            origin = FakeOrigin()
            origin.server = TestServer(origin.app(), host="127.0.0.1", port=free_port())
            await origin.server.start_server()
            servers.append(origin.server)
            origins.append(origin)
        return origins

    yield start
    for server in servers:
        await server.close()


def p2p_of(index: int) -> PeerAddr:
    """A P2P address per fake origin; nothing listens there, the tracker only hands it out."""
    return PeerAddr(f"127.0.0.{index + 2}", 15001 + index)


# ---- the tracker ---------------------------------------------------------------------------


@dataclass
class Tracker:
    server: TestServer
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def announce(self, ih: bytes, port: int, *, left: int = 0, event: str = "", numwant: int | None = None,
                       peer_id: bytes | None = None, path: str = "/announce", extra: str = "") -> Answer:
        """An announce as libtorrent sends it (see :func:`announce_query`)."""
        qs = announce_query(ih, port, left=left, event=event, numwant=numwant, peer_id=peer_id)
        async with self.session.get(URL(f"{self.url}{path}?{qs}{extra}", encoded=True)) as resp:
            return Answer(resp.status, lt.bdecode(await resp.read()))

    async def metainfo(self, digest: Digest, ns: str = "test%2Fx") -> tuple[int, bytes, str]:
        async with self.session.get(f"{self.url}/namespace/{ns}/blobs/{digest}/metainfo") as resp:
            return resp.status, await resp.read(), resp.content_type

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(f"{self.url}{path}") as resp:
            return resp.status, await resp.text()

    async def metrics(self) -> str:
        return (await self.get("/metrics"))[1]


TrackerFactory = Callable[..., Awaitable[Tracker]]


@pytest.fixture
async def start_tracker() -> AsyncIterator[TrackerFactory]:
    """Start in-process trackers configured with ``settings`` (plain data, as in YAML)."""
    trackers: list[Tracker] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def start(origins: Sequence[FakeOrigin] = (), max_replica: int = 1, **settings: Any) -> Tracker:
        hosts = [o.addr for o in origins]
        config = build(TrackerConfig, {
            "listen": {"host": "127.0.0.1", "port": free_port()},
            "origins": {"hosts": hosts, "max_replica": max_replica},
            "origin_p2p": {h: f"{p2p_of(i).ip}:{p2p_of(i).port}" for i, h in enumerate(hosts)},
            "announce_interval": "2s",
            **settings,
        })
        server = TestServer(create_tracker_app(config), host="127.0.0.1", port=config.listen.port)
        await server.start_server()
        tracker = Tracker(server, session)
        trackers.append(tracker)
        return tracker

    yield start
    for tracker in trackers:
        await tracker.server.close()
    await session.close()


# ---- announces (memory and redis) ----------------------------------------------------------


async def test_announce_answer_is_compact_with_the_interval(
    start_tracker: TrackerFactory, store_settings: dict[str, Any],
) -> None:
    tracker = await start_tracker(**store_settings)
    ih = bytes(range(200, 220))  # bytes that are not UTF-8
    first = await tracker.announce(ih, 6881, event="started")
    assert first.status == 200
    assert first.body == {b"interval": 2, b"min interval": 2, b"complete": 1, b"incomplete": 0, b"peers": b""}
    second = await tracker.announce(ih, 6882, left=100, event="started")
    assert second.body[b"peers"] == bytes([127, 0, 0, 1]) + (6881).to_bytes(2, "big")
    assert (second.body[b"complete"], second.body[b"incomplete"]) == (1, 1)


async def test_events_started_completed_stopped(start_tracker: TrackerFactory, store_settings: dict[str, Any]) -> None:
    tracker = await start_tracker(**store_settings)
    ih = random_hash()
    a, b = PeerAddr("127.0.0.1", 7001), PeerAddr("127.0.0.1", 7002)
    await tracker.announce(ih, a.port, left=10, event="started")
    answer = await tracker.announce(ih, b.port, left=10, event="started")
    assert answer.peers == [a] and answer.body[b"incomplete"] == 2
    await tracker.announce(ih, a.port, left=0, event="completed")
    answer = await tracker.announce(ih, b.port, left=5)
    assert answer.peers == [a] and (answer.body[b"complete"], answer.body[b"incomplete"]) == (1, 1)
    stopped = await tracker.announce(ih, a.port, left=0, event="stopped", numwant=0)
    assert stopped.status == 200 and stopped.peers == [] and stopped.body[b"complete"] == 0
    answer = await tracker.announce(ih, b.port, left=5)
    assert answer.peers == [] and (answer.body[b"complete"], answer.body[b"incomplete"]) == (0, 1)
    text = await tracker.metrics()
    for event, count in (("started", 2), ("completed", 1), ("stopped", 1), ("none", 2)):
        assert metric(text, "kraken_tracker_announces_total", event=event) == count


async def test_numwant_and_the_cap_of_50(start_tracker: TrackerFactory, store_settings: dict[str, Any]) -> None:
    tracker = await start_tracker(limits={"peers_per_ip": 100}, **store_settings)
    ih = random_hash()
    await asyncio.gather(*(tracker.announce(ih, 8000 + n, left=1) for n in range(60)))
    me = 9000
    assert len((await tracker.announce(ih, me, left=1)).peers) == 50
    assert len((await tracker.announce(ih, me, left=1, numwant=200)).peers) == 50
    few = (await tracker.announce(ih, me, left=1, numwant=3)).peers
    assert len(few) == 3 == len(set(few)) and PeerAddr("127.0.0.1", me) not in few
    assert (await tracker.announce(ih, me, left=1, numwant=0)).peers == []


async def test_handout_order_confirmed_seeders_origins_leechers_unconfirmed_seeders(
    start_tracker: TrackerFactory, fake_origins: Callable[[int], Awaitable[list[FakeOrigin]]],
    store_settings: dict[str, Any], tmp_path: Path,
) -> None:
    origins = await fake_origins(3)
    blob = make_blob(tmp_path)
    for origin in origins:
        origin.metainfo[str(blob.digest)] = blob.metainfo
    tracker = await start_tracker(origins, max_replica=2, **store_settings)
    assert (await tracker.metainfo(blob.digest))[0] == 200  # teaches the tracker info_hash -> digest
    hosts = [o.addr for o in origins]
    owners = HashRing(hosts, 2).owners(blob.digest)
    owner_p2p = {p2p_of(hosts.index(h)) for h in owners}

    ih = blob.info_hash
    listening = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]  # seeders that accept connections
    try:
        seeders = {PeerAddr("127.0.0.1", s.getsockname()[1]) for s in listening}
        fake = PeerAddr("127.0.0.1", free_port())  # a seeder announced from a closed port
        leechers = {PeerAddr("127.0.0.1", 7200 + n) for n in range(3)}
        for p in [*seeders, fake]:
            await tracker.announce(ih, p.port, left=0, event="started")
        for p in leechers:
            await tracker.announce(ih, p.port, left=1, event="started")
        me = 7300

        async def probed() -> Answer | None:
            answer = await tracker.announce(ih, me, left=1, event="started")
            return answer if set(answer.peers[:3]) == seeders else None

        answer = await until(probed, what="the listening seeders to be confirmed")
    finally:
        for s in listening:
            s.close()
    peers = answer.peers
    assert len(peers) == 9 and PeerAddr("127.0.0.1", me) not in peers
    assert set(peers[3:5]) == owner_p2p and set(peers[5:8]) == leechers and peers[8] == fake
    assert (answer.body[b"complete"], answer.body[b"incomplete"]) == (4 + 2, 4)
    before = metric(await tracker.metrics(), "kraken_tracker_peers_returned_total", **{"class": "origin"})
    # The origins' room is reserved: however few peers are asked for, they are in the answer.
    limited = (await tracker.announce(ih, me, left=1, numwant=3)).peers
    assert limited[0] in seeders and set(limited[1:]) == owner_p2p
    assert set((await tracker.announce(ih, me, left=1, numwant=2)).peers) == owner_p2p
    after = metric(await tracker.metrics(), "kraken_tracker_peers_returned_total", **{"class": "origin"})
    assert after - before == 2 + 2
    # A seeder's own announce gets the seeders first; the origins only fill the room left.
    # (numwant=4: the store's sample, one more than asked for, holds all 5 seeders, 7400 included.)
    given = (await tracker.announce(ih, 7400, left=0, numwant=4)).peers
    assert set(given[:3]) == seeders and given[3] in owner_p2p


async def test_silent_peers_expire(start_tracker: TrackerFactory, store_settings: dict[str, Any]) -> None:
    tracker = await start_tracker(announce_interval="100ms", peer_ttl="1s", **store_settings)
    ih = random_hash()
    await tracker.announce(ih, 7001, event="started")
    assert (await tracker.announce(ih, 7002, left=1)).peers == [PeerAddr("127.0.0.1", 7001)]

    async def expired() -> bool:
        answer = await tracker.announce(ih, 7002, left=1)
        return answer.peers == [] and answer.body[b"complete"] == 0

    await until(expired, timeout=10, what="the silent peer to expire")


async def test_peer_store_down_is_a_503_failure(start_tracker: TrackerFactory) -> None:
    tracker = await start_tracker(store="redis", redis={"addr": f"127.0.0.1:{free_port()}", "timeout": "1s"})
    answer = await tracker.announce(random_hash(), 7001)
    assert answer.status == 503 and b"peer store unavailable" in answer.body[b"failure reason"]
    status, text = await tracker.get("/readiness")
    assert status == 503 and "redis" in text


# ---- announce edge cases (memory store) ----------------------------------------------------


async def test_malformed_announces_get_a_failure_reason(start_tracker: TrackerFactory) -> None:
    tracker = await start_tracker()
    answer = await tracker.announce(b"short", 7001)
    assert answer.status == 400 and answer.body == {b"failure reason": b"info_hash must be 20 bytes, got 5"}
    status, body = await tracker.get("/announce")
    assert status == 400 and lt.bdecode(body.encode()) == {b"failure reason": b"missing info_hash"}
    assert metric(await tracker.metrics(), "kraken_tracker_announce_failures_total", reason="invalid") == 2


async def test_hash_bytes_that_look_percent_encoded_are_decoded_once(start_tracker: TrackerFactory) -> None:
    # '%' then two hex digits: libtorrent sends "%2541", which a second decoding turns into "A".
    ih = b"%41%7e" + bytes(range(200, 214))
    tracker = await start_tracker()
    first = await tracker.announce(ih, 7001, peer_id=b"-LT2110-%25%41bcdefg")
    assert first.status == 200, first.body
    assert (await tracker.announce(ih, 7002)).peers == [PeerAddr("127.0.0.1", 7001)]


async def test_announces_beyond_the_limits_are_refused_with_a_reason(start_tracker: TrackerFactory) -> None:
    tracker = await start_tracker(limits={"torrents_per_ip": 2, "torrents": 3}, trust_ip_param=True)
    for _ in range(2):
        assert (await tracker.announce(random_hash(), 7001)).status == 200
    refused = await tracker.announce(random_hash(), 7001)
    assert refused.status == 429
    assert refused.body == {b"failure reason": b"too many torrents announced from this address (limit 2)"}
    assert (await tracker.announce(random_hash(), 7001, extra="&ip=10.0.0.2")).status == 200
    full = await tracker.announce(random_hash(), 7001, extra="&ip=10.0.0.3")
    assert full.status == 503 and full.body == {b"failure reason": b"too many torrents tracked (limit 3)"}
    text = await tracker.metrics()
    assert metric(text, "kraken_tracker_announce_failures_total", reason="limit_ip") == 1
    assert metric(text, "kraken_tracker_announce_failures_total", reason="limit_total") == 1


async def test_any_path_under_announce_is_the_announce(start_tracker: TrackerFactory) -> None:
    tracker = await start_tracker()
    ih = random_hash()
    await tracker.announce(ih, 7001, path="/announce/abc")
    assert (await tracker.announce(ih, 7002, path="/announce/x/y")).peers == [PeerAddr("127.0.0.1", 7001)]
    assert (await tracker.get("/scrape"))[0] == 404


async def test_the_ip_parameter_only_counts_when_trusted(start_tracker: TrackerFactory) -> None:
    ih = random_hash()
    untrusting = await start_tracker()
    await untrusting.announce(ih, 7001, extra="&ip=10.9.8.7")
    assert (await untrusting.announce(ih, 7002)).peers == [PeerAddr("127.0.0.1", 7001)]
    trusting = await start_tracker(trust_ip_param=True)
    await trusting.announce(ih, 7001, extra="&ip=10.9.8.7")
    assert (await trusting.announce(ih, 7002)).peers == [PeerAddr("10.9.8.7", 7001)]
    assert (await trusting.announce(ih, 7003, extra="&ip=example.com")).status == 400


# ---- metainfo against fake origins ---------------------------------------------------------


async def test_concurrent_metainfo_requests_share_one_origin_call(
    start_tracker: TrackerFactory, fake_origins: Callable[[int], Awaitable[list[FakeOrigin]]], tmp_path: Path,
) -> None:
    (origin,) = await fake_origins(1)
    blob = make_blob(tmp_path)
    origin.metainfo[str(blob.digest)] = blob.metainfo
    origin.gate = asyncio.Event()
    tracker = await start_tracker([origin])
    requests = [asyncio.create_task(tracker.metainfo(blob.digest)) for _ in range(8)]

    async def all_waiting() -> bool:
        return metric(await tracker.metrics(), "kraken_tracker_metainfo_cache_total", 0, result="miss") == 8

    await until(all_waiting, what="8 requests waiting on the origin")
    origin.gate.set()
    answers = await asyncio.gather(*requests)
    assert answers == [(200, blob.metainfo, "application/x-bittorrent")] * 8
    assert origin.requests == [(NS, str(blob.digest))]


async def test_agents_asking_for_one_blob_get_successive_swarm_slots(
    start_tracker: TrackerFactory, fake_origins: Callable[[int], Awaitable[list[FakeOrigin]]], tmp_path: Path,
) -> None:
    (origin,) = await fake_origins(1)
    first, second = make_blob(tmp_path), make_blob(tmp_path)
    for blob in (first, second):
        origin.metainfo[str(blob.digest)] = blob.metainfo
    tracker = await start_tracker([origin])

    async def slot(digest: Digest) -> str:
        async with tracker.session.get(f"{tracker.url}/namespace/test%2Fx/blobs/{digest}/metainfo") as resp:
            assert resp.status == 200
            return resp.headers["Kraken-Swarm-Slot"]

    # Cached or not, every request numbers the asker; each blob counts on its own.
    assert [await slot(first.digest) for _ in range(3)] == ["0", "1", "2"]
    assert await slot(second.digest) == "0"


async def test_metainfo_is_cached_and_the_cache_is_bounded(
    start_tracker: TrackerFactory, fake_origins: Callable[[int], Awaitable[list[FakeOrigin]]], tmp_path: Path,
) -> None:
    (origin,) = await fake_origins(1)
    blobs = [make_blob(tmp_path) for _ in range(2)]
    for blob in blobs:
        origin.metainfo[str(blob.digest)] = blob.metainfo
    # Room for one metainfo only: the second evicts the first.
    tracker = await start_tracker([origin], metainfo={"cache_size": len(blobs[0].metainfo) + 10})
    for _ in range(3):
        assert (await tracker.metainfo(blobs[0].digest))[:2] == (200, blobs[0].metainfo)
    assert len(origin.requests) == 1
    text = await tracker.metrics()
    assert metric(text, "kraken_tracker_metainfo_cache_total", result="hit") == 2
    assert metric(text, "kraken_tracker_metainfo_cache_total", result="miss") == 1
    await tracker.metainfo(blobs[1].digest)
    await tracker.metainfo(blobs[0].digest)
    assert [d for _, d in origin.requests] == [str(blobs[0].digest), str(blobs[1].digest), str(blobs[0].digest)]


async def test_origin_answers_pass_through(
    start_tracker: TrackerFactory, fake_origins: Callable[[int], Awaitable[list[FakeOrigin]]], tmp_path: Path,
) -> None:
    (origin,) = await fake_origins(1)
    tracker = await start_tracker([origin], metainfo={"poll_timeout": "200ms"})
    fetching, empty, broken, missing = (make_blob(tmp_path, 10 + n).digest for n in range(4))
    origin.status.update({str(fetching): 202, str(empty): 422, str(broken): 500})

    started = time.monotonic()
    status, body, _ = await tracker.metainfo(fetching)
    assert status == 202 and b"being fetched" in body
    assert time.monotonic() - started < 5  # not the origin client's usual minutes of polling
    assert (await tracker.metainfo(missing))[0] == 404
    assert (await tracker.metainfo(empty))[:2] == (422, b'{"error": "fake origin says 422"}')
    assert (await tracker.metainfo(broken))[0] == 503
    assert (await tracker.metainfo(fetching))[0] == 202  # 202 is never cached
    assert metric(await tracker.metrics(), "kraken_tracker_origin_errors_total", kind="status") == 1
    assert (await tracker.get("/namespace/x/blobs/sha256:nothex/metainfo"))[0] == 400


async def test_origin_down_is_503_and_not_ready(
    start_tracker: TrackerFactory, fake_origins: Callable[[int], Awaitable[list[FakeOrigin]]], tmp_path: Path,
) -> None:
    (origin,) = await fake_origins(1)
    tracker = await start_tracker([origin])
    assert await tracker.get("/readiness") == (200, "OK\n")
    addr = origin.addr
    await origin.server.close()
    status, text = await tracker.get("/readiness")
    assert status == 503 and addr in text
    assert (await tracker.metainfo(make_blob(tmp_path, 10).digest))[0] == 503
    assert metric(await tracker.metrics(), "kraken_tracker_origin_errors_total", kind="unreachable") == 1


async def test_namespaces_with_a_slash_reach_the_origin_decoded(
    start_tracker: TrackerFactory, fake_origins: Callable[[int], Awaitable[list[FakeOrigin]]], tmp_path: Path,
) -> None:
    (origin,) = await fake_origins(1)
    tracker = await start_tracker([origin])
    a, b = make_blob(tmp_path, 10).digest, make_blob(tmp_path, 11).digest
    await tracker.metainfo(a, ns="library%2Fubuntu")
    await tracker.metainfo(b, ns="library/ubuntu")
    assert origin.requests == [("library/ubuntu", str(a)), ("library/ubuntu", str(b))]
