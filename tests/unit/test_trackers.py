"""Several trackers (kraken.p2p.trackers over kraken.http.hostlist): the config, the failover
order, DNS re-resolution, and the agent's metainfo client failing over between real HTTP
servers in this process."""
from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from kraken.agent.config import AgentConfig
from kraken.agent.tracker import TrackerClient, TrackerUnavailable
from kraken.config import build
from kraken.core.digest import Digest
from kraken.devcluster import free_port
from kraken.http import hostlist as hostlist_module
from kraken.http.client import create_client
from kraken.http.config import HttpClientConfig
from kraken.http.hostlist import DOWN_MAX, DOWN_MIN, host_offset
from kraken.metrics import Metrics
from kraken.origin.config import OriginConfig
from kraken.p2p.trackers import TrackerList, TrackersConfig
from tests.support.clock import Clock, patch_clock
from tests.support.waiting import until

DIGEST = Digest.of_bytes(b"blob")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """kraken.http.hostlist's time (down periods, DNS ttl) moves only when the test moves it."""
    return patch_clock(monkeypatch, hostlist_module)


def listed(*addrs: str, metrics: Metrics | None = None) -> TrackerList:
    return TrackerList(TrackersConfig(addrs=list(addrs)), metrics or Metrics("t"), hostname="host-a")


# ---- config ----------------------------------------------------------------------------------

def test_dns_or_addrs_win_over_addr() -> None:
    """So a config listing ``addrs`` over a base with ``addr`` gets exactly its list; ``addrs``
    and ``dns`` together are refused (as in Kraken's hostlist)."""
    config = TrackersConfig(addr="a:1", addrs=["b:2", "c:3", "b:2"])
    assert config.static() == ["b:2", "c:3"] and config.several()
    assert TrackersConfig(addr="a:1").static() == ["a:1"] and not TrackersConfig(addr="a:1").several()
    with_dns = TrackersConfig(addr="a:1", dns="t:1")
    assert with_dns.static() == [] and with_dns.several() and with_dns.configured()
    with pytest.raises(ValueError, match="not both"):
        TrackersConfig(addrs=["b:2"], dns="t:1")
    assert not TrackersConfig().configured()


@pytest.mark.parametrize("bad", [{"addr": "nohost"}, {"addrs": ["a:1", "b"]}, {"dns": "name"}, {"addrs": ["a:x"]},
                                 {"addr": "a:1", "dns_ttl": 0}])
def test_malformed_tracker_addresses_fail_at_load(bad: dict) -> None:
    with pytest.raises(ValueError):
        TrackersConfig(**bad)


def test_agent_and_origin_configs_take_a_list() -> None:
    agent = build(AgentConfig, {"store": {"root": "/x"},
                                "tracker": {"addr": "localhost:15003", "addrs": ["t1:15003", "t2:15003"]}})
    assert agent.tracker.static() == ["t1:15003", "t2:15003"]
    assert build(AgentConfig, {"store": {"root": "/x"}}).tracker.static() == ["localhost:15003"]
    with pytest.raises(Exception, match="tracker"):
        build(AgentConfig, {"store": {"root": "/x"}, "tracker": {}})
    origin = build(OriginConfig, {"tracker": {"dns": "trackers:15003", "dns_ttl": "30s"}})
    assert origin.tracker.dns == "trackers:15003" and origin.tracker.dns_ttl == 30
    assert not build(OriginConfig, {}).tracker.configured()


# ---- order and failover ----------------------------------------------------------------------

def test_hosts_spread_over_the_trackers_and_each_host_keeps_its_choice() -> None:
    picks = [host_offset(3, f"agent-{i}") for i in range(300)]
    assert all(picks.count(i) > 60 for i in range(3))
    assert host_offset(3, "agent-7") == host_offset(3, "agent-7")
    addrs = ["t1:1", "t2:1", "t3:1"]
    order = listed(*addrs).order()
    assert sorted(order) == addrs and order[0] == addrs[host_offset(3, "host-a")]
    assert order == (addrs * 2)[addrs.index(order[0]):][:3]  # then the others, in the listed order


async def test_a_failed_tracker_is_tried_last_for_a_doubling_period_then_preferred_again(clock: Clock) -> None:
    trackers = listed("t1:1", "t2:1")
    first, second = trackers.order()
    calls: list[str] = []
    down = {first}

    async def attempt(addr: str) -> str:
        calls.append(addr)
        if addr in down:
            raise ConnectionRefusedError(f"{addr} refused")
        return addr

    assert await trackers.call(attempt) == second
    assert calls == [first, second] and trackers.order() == [second, first]
    clock.now += DOWN_MIN - 0.1
    assert await trackers.call(attempt) == second and calls[-1] == second and len(calls) == 3
    clock.now += 0.2  # tried again: still down, now tried last for twice as long
    assert await trackers.call(attempt) == second and calls[-2:] == [first, second]
    clock.now += 2 * DOWN_MIN - 0.1
    assert trackers.order() == [second, first]
    clock.now += 0.2
    down.clear()
    assert await trackers.call(attempt) == first  # back: this host's preference again
    assert trackers.order() == [first, second]


async def test_the_down_period_is_bounded(clock: Clock) -> None:
    trackers = listed("t1:1")

    async def refused(addr: str) -> str:
        raise ConnectionRefusedError(addr)

    for _ in range(20):
        with pytest.raises(ConnectionRefusedError):
            await trackers.call(refused)
        clock.now += DOWN_MAX
    assert trackers.hosts._down["t1:1"][1] == DOWN_MAX


async def test_answers_and_other_errors_do_not_fail_over() -> None:
    metrics = Metrics("t")
    trackers = listed("t1:1", "t2:1", metrics=metrics)
    calls: list[str] = []

    async def rejects(addr: str) -> str:
        calls.append(addr)
        raise ValueError("a 4xx, say")

    with pytest.raises(ValueError):
        await trackers.call(rejects)
    assert len(calls) == 1
    assert metrics.registry.get_sample_value("kraken_t_tracker_failovers_total", {"tracker": calls[0]}) is None


async def test_when_every_tracker_fails_the_last_error_is_raised() -> None:
    trackers = listed("t1:1", "t2:1")

    async def refused(addr: str) -> str:
        raise ConnectionRefusedError(addr)

    with pytest.raises(ConnectionRefusedError, match=trackers.order()[1]):
        await trackers.call(refused)


async def test_a_budget_is_shared_between_the_attempts() -> None:
    trackers = listed("t1:1", "t2:1")
    hung = trackers.order()[0]

    async def attempt(addr: str) -> str:
        if addr == hung:
            await asyncio.Event().wait()  # hangs: the budget's share is what ends it
        return addr

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await trackers.call(attempt, budget=1.0) != hung
    assert 0.4 < loop.time() - started < 1.0


# ---- DNS -------------------------------------------------------------------------------------

@dataclass
class FakeDns:
    answers: list[list[str] | None]
    asked: list[str] = field(default_factory=list)

    async def __call__(self, host: str, timeout: float) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
        self.asked.append(host)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return None if answer is None else [ipaddress.ip_address(a) for a in answer]


async def test_dns_is_resolved_at_start_and_again_after_the_ttl_keeping_the_last_answer(clock: Clock) -> None:
    dns = FakeDns([["10.0.0.2", "10.0.0.1"], None, ["10.0.0.3", "::1"]])
    trackers = TrackerList(TrackersConfig(dns="trackers.example:15003", dns_ttl=5), Metrics("t"), dns)
    await trackers.start()

    async def attempt(addr: str) -> str:
        return addr

    assert trackers.addrs == ("10.0.0.1:15003", "10.0.0.2:15003") or trackers.addrs == ("10.0.0.2:15003",
                                                                                         "10.0.0.1:15003")
    await trackers.call(attempt)
    assert len(dns.asked) == 1  # within the ttl: no lookup
    clock.now += 5
    await trackers.call(attempt)
    assert len(dns.asked) == 2 and sorted(trackers.addrs) == ["10.0.0.1:15003", "10.0.0.2:15003"]  # failed: kept
    clock.now += 5
    assert await trackers.call(attempt) in ("10.0.0.3:15003", "[::1]:15003")
    assert sorted(trackers.addrs) == ["10.0.0.3:15003", "[::1]:15003"] and dns.asked[0] == "trackers.example"
    assert trackers.describe().startswith("dns:trackers.example:15003,")


async def test_dns_that_does_not_resolve_at_start_fails_the_start() -> None:
    with pytest.raises(ConnectionError, match="does not resolve"):
        await TrackerList(TrackersConfig(dns="nowhere.example:1"), Metrics("t"), FakeDns([None])).start()


async def test_a_real_lookup_of_localhost() -> None:
    trackers = TrackerList(TrackersConfig(dns="localhost:15003"), Metrics("t"))
    await trackers.start()
    assert "127.0.0.1:15003" in trackers.addrs


# ---- the agent's metainfo client -------------------------------------------------------------

@asynccontextmanager
async def fake_tracker(status: int = 200, body: bytes = b"torrent") -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server answering every request with ``status``; (its address, paths asked)."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(status=status, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def preferring(first: str, other: str, metrics: Metrics) -> TrackerList:
    addrs = [first, other] if host_offset(2, "host-a") == 0 else [other, first]
    trackers = TrackerList(TrackersConfig(addrs=addrs), metrics, hostname="host-a")
    assert trackers.order() == [first, other]
    return trackers


async def test_metainfo_fails_over_to_the_tracker_that_answers(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics("t")
    dead = f"127.0.0.1:{free_port()}"
    http = create_client(HttpClientConfig(connect_timeout=1.0, retries=2))
    try:
        async with fake_tracker() as (alive, seen):
            client = TrackerClient(preferring(dead, alive, metrics), http, 5.0, "unused")
            metainfo = await client.get_metainfo("library/x", DIGEST)
            assert metainfo is not None and metainfo.data == b"torrent"
            assert seen == [f"/namespace/library%2Fx/blobs/{DIGEST}/metainfo"]
            await client.ping()
    finally:
        await http.close()
    assert metrics.registry.get_sample_value("kraken_t_tracker_failovers_total", {"tracker": dead}) == 1
    assert "tracker failover" in [r.getMessage() for r in caplog.records]


async def test_a_503_fails_over_a_500_does_not_and_no_tracker_is_unavailable() -> None:
    """A tracker answering 502/503/504 (its store lost, draining) is passed over like a dead
    one; any other status is the answer."""
    http = create_client(HttpClientConfig(retries=0))
    try:
        async with fake_tracker(503, b'{"error": "redis down"}') as (failing, _), fake_tracker() as (alive, seen):
            client = TrackerClient(preferring(failing, alive, Metrics("t")), http, 5.0, "unused")
            await client.get_metainfo("ns", DIGEST)
            assert seen, "the request did not move to the tracker that answers"
        async with fake_tracker(500, b'{"error": "bug"}') as (broken, _), fake_tracker() as (alive, seen):
            client = TrackerClient(preferring(broken, alive, Metrics("t")), http, 5.0, "unused")
            with pytest.raises(TrackerUnavailable, match="500"):
                await client.get_metainfo("ns", DIGEST)
            assert seen == []
        dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
        client = TrackerClient(TrackerList(TrackersConfig(addrs=dead), Metrics("t")), http, 5.0, "unused")
        with pytest.raises(TrackerUnavailable, match="unreachable"):
            await client.get_metainfo("ns", DIGEST)
        with pytest.raises(ConnectionError, match="no tracker is healthy"):
            await client.ping()
    finally:
        await http.close()


async def test_requests_failing_together_count_as_one_failure_of_the_tracker(clock: Clock) -> None:
    """Concurrent requests that all met the dead tracker do not stretch its down period."""
    metrics = Metrics("t")
    trackers = listed("t1:1", "t2:1", metrics=metrics)
    dead = trackers.order()[0]
    gate = asyncio.Event()
    waiting: list[str] = []

    async def attempt(addr: str) -> str:
        if addr == dead:
            waiting.append(addr)
            await gate.wait()
            raise ConnectionResetError(addr)
        return addr

    calls = [asyncio.create_task(trackers.call(attempt)) for _ in range(5)]
    await until(lambda: len(waiting) == 5, 10, "every call at the dead tracker")
    gate.set()
    assert {await c for c in calls} == {trackers.order()[0]}
    assert trackers.hosts._down[dead][1] == DOWN_MIN
    assert metrics.registry.get_sample_value("kraken_t_tracker_failovers_total", {"tracker": dead}) == 5
