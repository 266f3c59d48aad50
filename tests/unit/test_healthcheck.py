"""The ring's health checks (kraken/http/healthcheck.py): thresholds of the active checks against
a real tiny HTTP server that can be told to fail or to hang, the passive failure window on a
clock the test moves, the background task, the metrics and the log lines, and how
OriginCluster routes by the view."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kraken.config import ConfigError, build
from kraken.core.digest import Digest
from kraken.devcluster import free_port
from kraken.http.client import HttpClient, create_client
from kraken.http.config import HttpClientConfig
from kraken.http.health import check
from kraken.http.healthcheck import HostHealth, RingMetrics
from kraken.metrics import Metrics
from kraken.origin.client import OriginCluster
from kraken.ring import HashRing, HealthCheckConfig, PassiveConfig, RingConfig
from tests.support.waiting import until


class FakeHost:
    """An HTTP server whose ``/health`` answers 200, 500 (``fail``) or nothing (``hang``); any
    other request is counted and answered 404."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.checks = 0
        self.requests = 0
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self.server = TestServer(app, host="127.0.0.1")

    async def _other(self, _: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=404)

    async def _health(self, _: web.Request) -> web.Response:
        self.checks += 1
        if self.mode == "hang":
            await asyncio.Event().wait()  # never answers: the check's timeout is what ends it
        return web.Response(status=500 if self.mode == "fail" else 200, text="x")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture
async def host() -> AsyncIterator[FakeHost]:
    fake = FakeHost()
    await fake.server.start_server()
    yield fake
    await fake.server.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = create_client(HttpClientConfig(connect_timeout=1, read_timeout=5, retries=0))
    yield c
    await c.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health(hosts: list[str], metrics: Metrics | None = None, clock: Clock | None = None, **active: float) -> HostHealth:
    config = HealthCheckConfig(**{"interval": 0.05, "timeout": 0.5, "fails": 3, "passes": 2, **active})
    return HostHealth(hosts, config, PassiveConfig(fails=2, fail_timeout=5), RingMetrics(metrics or Metrics("t")),
                      "origin", clock or Clock())


def gauge(metrics: Metrics, host: str) -> float | None:
    return metrics.registry.get_sample_value("kraken_ring_host_healthy", {"host": host})


async def test_fails_in_a_row_take_a_host_out_and_passes_in_a_row_bring_it_back(
    host: FakeHost, client: HttpClient
) -> None:
    metrics = Metrics("t")
    h = health([host.addr], metrics)

    async def probe(addr: str) -> None:
        await check(client, addr, 0.5)

    assert h.healthy() == [host.addr] and gauge(metrics, host.addr) == 1
    host.mode = "fail"
    for _ in range(2):
        await h.check_all(probe)
        assert h.healthy() == [host.addr]  # below the threshold
    await h.check_all(probe)
    assert h.healthy() == [] and gauge(metrics, host.addr) == 0

    host.mode = "ok"
    await h.check_all(probe)
    assert h.healthy() == []  # one pass is not enough
    host.mode = "fail"
    await h.check_all(probe)  # a failure resets the passes
    host.mode = "ok"
    await h.check_all(probe)
    assert h.healthy() == []
    await h.check_all(probe)
    assert h.healthy() == [host.addr] and gauge(metrics, host.addr) == 1
    assert host.checks == 7


async def test_a_single_failure_between_passes_does_not_count(host: FakeHost, client: HttpClient) -> None:
    h = health([host.addr])

    async def probe(addr: str) -> None:
        await check(client, addr, 0.5)

    for mode in ["fail", "fail", "ok", "fail", "fail", "ok"]:
        host.mode = mode
        await h.check_all(probe)
        assert h.healthy() == [host.addr], mode


async def test_a_check_that_hangs_fails_at_its_timeout(host: FakeHost, client: HttpClient) -> None:
    h = health([host.addr], fails=1, timeout=0.3)
    host.mode = "hang"

    async def probe(addr: str) -> None:  # no bound of its own: the checker's timeout must end it
        (await client.request("GET", client.url(addr, "/health"), retry=False)).release()

    started = time.monotonic()
    await h.check_all(probe)
    assert time.monotonic() - started < 2.0
    assert h.healthy() == []


async def test_an_unreachable_host_fails_its_checks(client: HttpClient) -> None:
    dead = f"127.0.0.1:{free_port()}"
    h = health([dead], fails=1)

    async def probe(addr: str) -> None:
        await check(client, addr, 0.5)

    await h.check_all(probe)
    assert h.healthy() == []


def test_passive_failures_count_within_their_window_only() -> None:
    clock = Clock()
    metrics = Metrics("t")
    h = health(["a:1", "b:1"], metrics, clock)
    error = ConnectionRefusedError("refused")
    h.failed("a:1", error)
    clock.now += 6  # the first failure left the 5 s window
    h.failed("a:1", error)
    assert h.healthy() == ["a:1", "b:1"]
    clock.now += 1
    h.failed("a:1", error)
    assert h.healthy() == ["b:1"] and gauge(metrics, "a:1") == 0
    clock.now += 4.9
    assert h.healthy() == ["b:1"]
    clock.now += 0.2  # fail_timeout after the mark
    assert h.healthy() == ["a:1", "b:1"] and gauge(metrics, "a:1") == 1
    h.failed("unknown:1", error)  # not a host of the ring: ignored
    assert h.healthy() == ["a:1", "b:1"]


def test_passes_end_a_passive_mark_early() -> None:
    h = health(["a:1"])
    for _ in range(2):
        h.failed("a:1", TimeoutError())
    assert h.healthy() == []
    h.checked("a:1", None)
    assert h.healthy() == []
    h.checked("a:1", None)
    assert h.healthy() == ["a:1"]


def test_leaving_and_rejoining_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    h = health(["a:1"])
    with caplog.at_level(logging.INFO, logger="kraken.http.healthcheck"):
        for _ in range(5):
            h.checked("a:1", "HTTPStatusError: 500")
            h.healthy()
        for _ in range(3):
            h.checked("a:1", None)
            h.healthy()
    left = [r.kraken_fields for r in caplog.records if r.getMessage() == "origin left the healthy set"]
    assert left == [{"host": "a:1", "reason": "3 failed health checks in a row, last HTTPStatusError: 500"}]
    back = [r.kraken_fields for r in caplog.records if r.getMessage() == "origin rejoined the healthy set"]
    assert back == [{"host": "a:1"}]


async def test_the_background_task_follows_the_host_and_stops_when_cancelled(
    host: FakeHost, client: HttpClient
) -> None:
    metrics = Metrics("t")
    h = health([host.addr], metrics)

    async def probe(addr: str) -> None:
        await check(client, addr, 0.5)

    task = asyncio.create_task(h.run(probe))
    try:
        host.mode = "fail"
        await until(lambda: gauge(metrics, host.addr) == 0, 10, "host out of the view")
        host.mode = "ok"
        await until(lambda: gauge(metrics, host.addr) == 1, 10, "host back in the view")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.done()  # nothing runs after the cancel


async def test_interval_zero_runs_no_checks(host: FakeHost) -> None:
    h = health([host.addr], interval=0)

    async def probe(addr: str) -> None:
        raise AssertionError("no check expected")

    await asyncio.wait_for(h.run(probe), 1)
    assert host.checks == 0


def test_the_ring_section_reads_durations_and_refuses_nonsense() -> None:
    config = build(RingConfig, {"hosts": ["a:1"], "health_check": {"interval": "500ms", "fails": 4},
                                "passive": {"fail_timeout": "10s"}})
    assert config.health_check == HealthCheckConfig(interval=0.5, timeout=1.0, fails=4, passes=2)
    assert config.passive == PassiveConfig(fails=2, fail_timeout=10.0)
    for bad in ({"health_check": {"fails": 0}}, {"health_check": {"timeout": "0s"}}, {"passive": {"fails": 0}}):
        with pytest.raises(ConfigError):
            build(RingConfig, bad)


def test_ranked_puts_the_healthy_hosts_first() -> None:
    hosts = [f"o{i}:1" for i in range(5)]
    ring = HashRing(hosts, 2)
    for i in range(50):
        d = Digest.of_bytes(str(i).encode())
        full = HashRing(hosts, 5).owners(d)
        assert ring.ranked(d) == full
        ring.set_healthy([h for h in hosts if h != full[0]])
        assert ring.ranked(d) == full[1:] + full[:1]
        assert ring.owners(d) == full[1:2]
        ring.set_healthy(hosts)


async def test_cluster_moves_a_call_to_the_next_host_and_counts_it(host: FakeHost, client: HttpClient) -> None:
    """A call whose first host refuses connections goes to the next; the second such call
    takes the host out (passive), so the third goes straight to the live one."""
    dead = f"127.0.0.1:{free_port()}"
    metrics = Metrics("t")
    cluster = OriginCluster(RingConfig([dead, host.addr], 1), client, metrics=RingMetrics(metrics))
    d = next(d for d in (Digest.of_bytes(str(i).encode()) for i in range(100))
             if HashRing([dead, host.addr], 1).owners(d) == [dead])

    for calls in (1, 2, 3):
        assert await cluster.stat("ns", d) is None  # the live host's 404
        assert host.requests == calls
    assert metrics.registry.get_sample_value("kraken_ring_failovers_total") == 2
    assert gauge(metrics, dead) == 0 and gauge(metrics, host.addr) == 1
    assert await cluster.locations(d) == [host.addr]


async def test_cluster_checks_run_between_start_and_close(host: FakeHost, client: HttpClient) -> None:
    metrics = Metrics("t")
    config = RingConfig([host.addr], 1, HealthCheckConfig(interval=0.05, fails=1, passes=1))
    cluster = OriginCluster(config, client, metrics=RingMetrics(metrics))
    cluster.start()
    checker = cluster._checker
    assert checker is not None
    try:
        host.mode = "fail"
        await until(lambda: gauge(metrics, host.addr) == 0, 10, "host out of the view")
        host.mode = "ok"
        await until(lambda: gauge(metrics, host.addr) == 1, 10, "host back in the view")
    finally:
        await cluster.close()
    assert checker.done()  # nothing runs after the close
