"""The announce relay (kraken.p2p.announcerelay) against an HTTPS "tracker" in this process that
requires the cluster CA's client certificates: what it forwards, and its bounds; and its
failover between several trackers (HTTPS or plain HTTP)."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
from aiohttp import web

from kraken.devcluster import free_port
from kraken.http.client import create_client
from kraken.http.config import HttpClientConfig, SecretFile, TLSConfig, X509Pair
from kraken.http.hostlist import host_offset
from kraken.http.tls import ClientAuth, server_context
from kraken.metrics import Metrics
from kraken.p2p.announcerelay import MAX_ANSWER, AnnounceRelay, announce_url, relay_host
from kraken.p2p.trackers import TrackerList, TrackersConfig
from tests.support.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(pki: Pki, *, client: bool = True) -> TLSConfig:
    pair = X509Pair(cert=SecretFile(pki["client.pem"]), key=SecretFile(pki["client-key.pem"])) if client else X509Pair()
    return TLSConfig(name="kraken", cas=[SecretFile(pki["ca.pem"])], client=pair,
                     server=X509Pair(cert=SecretFile(pki["server.pem"]), key=SecretFile(pki["server-key.pem"]),
                                     passphrase=SecretFile(pki["passphrase"])))


def trackers(*addrs: str) -> TrackerList:
    return TrackerList(TrackersConfig(addrs=list(addrs)), Metrics("t"))


@dataclass
class Tracker:
    """What the fake tracker received, and what it answers."""

    addr: str = ""
    seen: list[tuple[str, str, bool]] = field(default_factory=list)  # raw path, user agent, certified
    body: bytes = b"d8:intervali5e5:peers0:e"
    status: int = 200
    #: Stops listening: connections to ``addr`` are then refused.
    stop: Callable[[], Awaitable[None]] = field(default=lambda: _not_listening())


async def _not_listening() -> None:
    """``stop`` of a tracker that never listened: nothing to stop."""


@asynccontextmanager
async def serving(pki: Pki | None) -> AsyncIterator[Tracker]:
    """A fake tracker: HTTPS requiring a client certificate with ``pki``, else plain HTTP."""
    state = Tracker()

    async def handle(request: web.Request) -> web.Response:
        state.seen.append((request.raw_path, request.headers.get("User-Agent", ""),
                           bool(request.get_extra_info("peercert"))))
        return web.Response(status=state.status, body=state.body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    context = server_context(tls_config(pki), ClientAuth.REQUIRED) if pki is not None else None
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    assert site._server is not None
    state.addr = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    state.stop = runner.cleanup
    try:
        yield state
    finally:
        if runner.server is not None:
            await runner.cleanup()


@pytest.fixture
async def tracker(pki: Pki) -> AsyncIterator[Tracker]:
    async with serving(pki) as state:
        yield state


async def start_relay(addrs: list[str], tls: TLSConfig, host: str = "0.0.0.0",
                      metrics: Metrics | None = None) -> AnnounceRelay:
    return await AnnounceRelay.start(TrackerList(TrackersConfig(addrs=addrs), metrics or Metrics("t")),
                                     HttpClientConfig(), tls, host, metrics or Metrics("t"))


@pytest.fixture
async def relay(tracker: Tracker, pki: Pki) -> AsyncIterator[AnnounceRelay]:
    relay = await start_relay([tracker.addr], tls_config(pki))
    try:
        yield relay
    finally:
        await relay.close()


async def get(url: str, method: str = "GET") -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, url, headers={"User-Agent": "libtorrent/2.1.1.0"}) as r:
        return r.status, await r.read()


async def test_announces_are_forwarded_byte_for_byte_with_the_client_certificate(
    relay: AnnounceRelay, tracker: Tracker,
) -> None:
    assert relay.url.startswith("http://127.0.0.1:") and relay.url.endswith("/announce")
    info_hash = bytes(range(256))[::13] + b"%2B+"
    query = f"info_hash={quote_from_bytes(info_hash[:20], safe='')}&peer_id=-LT2110-%41%2b%7E+abcd&port=6881&left=0"
    url = aiohttp.client.URL(f"{relay.url}?{query}", encoded=True)
    async with aiohttp.ClientSession() as s, s.get(url, headers={"User-Agent": "libtorrent/2.1.1.0"}) as r:
        assert (r.status, await r.read()) == (200, tracker.body)
    assert tracker.seen == [(f"/announce?{query}", "libtorrent/2.1.1.0", True)]


async def test_the_trackers_status_and_failure_reason_pass_through(relay: AnnounceRelay, tracker: Tracker) -> None:
    tracker.status, tracker.body = 403, b"d14:failure reason38:seeding requires a cluster certificatee"
    assert await get(relay.url + "?left=0") == (403, tracker.body)


@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("GET", "/metrics"), ("GET", "/announce/x"),
                                              ("GET", "/announcex"), ("POST", "/announce"), ("HEAD", "/announce")])
async def test_only_get_announce_is_served(relay: AnnounceRelay, tracker: Tracker, method: str, path: str) -> None:
    status, _ = await get(relay.url.removesuffix("/announce") + path, method)
    assert status == 404
    assert tracker.seen == []


async def test_an_oversize_answer_is_refused(relay: AnnounceRelay, tracker: Tracker) -> None:
    tracker.body = os.urandom(MAX_ANSWER + 1)
    status, body = await get(relay.url + "?left=1")
    assert status == 502 and b"larger than" in body
    tracker.body = b"d8:intervali5e5:peers0:e"
    assert await get(relay.url + "?left=1") == (200, tracker.body)  # the relay recovers


async def test_an_unreachable_tracker_is_a_502(pki: Pki) -> None:
    relay = await start_relay(["127.0.0.1:1"], tls_config(pki), "127.0.0.1")
    try:
        status, body = await get(relay.url + "?left=1")
        assert status == 502 and b"unreachable" in body
    finally:
        await relay.close()


async def test_without_a_client_certificate_the_relay_still_trusts_only_the_cluster_ca(
    tracker: Tracker, pki: Pki,
) -> None:
    relay = await start_relay([tracker.addr], tls_config(pki, client=False))
    try:
        assert (await get(relay.url + "?left=1"))[0] == 200
        assert tracker.seen[-1][2] is False
    finally:
        await relay.close()


async def test_announce_url_starts_a_relay_only_for_an_https_tracker(tracker: Tracker, pki: Pki) -> None:
    metrics = Metrics("t")
    async with AsyncExitStack() as stack:
        plain = create_client(HttpClientConfig())
        stack.push_async_callback(plain.close)
        assert await announce_url(stack, trackers("tracker:15003"), plain, HttpClientConfig(), TLSConfig(), "0.0.0.0",
                                  metrics) == "http://tracker:15003/announce"
        config = tls_config(pki)
        secure = create_client(HttpClientConfig(), config)
        stack.push_async_callback(secure.close)
        url = await announce_url(stack, trackers(tracker.addr), secure, HttpClientConfig(), config, "0.0.0.0",
                                 metrics)
        assert url.startswith("http://127.0.0.1:")
        assert (await get(url + "?left=1"))[0] == 200
    with pytest.raises(aiohttp.ClientConnectionError):  # closed with the stack
        await get(url + "?left=1")


def test_relay_host_follows_the_p2p_listen_address() -> None:
    assert relay_host("0.0.0.0") == "127.0.0.1"
    assert relay_host("::") == "::1"
    assert relay_host("[::]") == "::1"
    assert relay_host("127.0.0.1") == "127.0.0.1"
    assert relay_host("10.1.2.3") == "10.1.2.3"  # libtorrent announces from that address only
    assert relay_host("eth0") == "127.0.0.1"


@pytest.mark.parametrize("target", ["http://elsewhere.example:80/announce?left=1&x=%41", "/%61nnounce?left=1&x=%41",
                                    "/announce?left=1&x=%41#fragment"])
async def test_only_the_query_reaches_the_tracker_whatever_the_request_target(
    relay: AnnounceRelay, tracker: Tracker, target: str,
) -> None:
    """An absolute-form target or another spelling of the path must not leak into the
    tracker's URL (an absolute one used to crash the handler: 500)."""
    host, port = relay.url.split("/")[2].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status_line = (await reader.read()).split(b"\r\n", 1)[0]
    finally:
        writer.close()
    assert status_line == b"HTTP/1.1 200 OK"
    assert [seen[0] for seen in tracker.seen] == ["/announce?left=1&x=%41"]


async def test_on_a_specific_address_other_callers_are_refused_closed_and_logged_once(
    tracker: Tracker, pki: Pki, caplog: pytest.LogCaptureFixture,
) -> None:
    """A scan of a relay on a non-loopback address must neither flood the log nor keep
    connections parked in the relay's few slots."""
    relay = await start_relay([tracker.addr], tls_config(pki), "127.0.0.2")
    try:
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
        async with aiohttp.ClientSession(connector=connector) as s:
            for _ in range(5):
                async with s.get(relay.url + "?left=1") as r:
                    assert r.status == 403 and r.headers.get("Connection", "").lower() == "close"
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as s, s.get(relay.url + "?left=1") as r:
            assert r.status == 200  # this host's own address
    finally:
        await relay.close()
    assert [seen[0] for seen in tracker.seen] == ["/announce?left=1"]
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1


# ---- several trackers ------------------------------------------------------------------------

def preferring(first: str, other: str, metrics: Metrics) -> TrackerList:
    """Two trackers, ``first`` the one this (fixed) host prefers."""
    addrs = [first, other] if host_offset(2, "host-a") == 0 else [other, first]
    listed = TrackerList(TrackersConfig(addrs=addrs), metrics, hostname="host-a")
    assert listed.order() == [first, other]
    return listed


def sample(metrics: Metrics, name: str, tracker: str) -> float | None:
    return metrics.registry.get_sample_value(f"kraken_t_{name}", {"tracker": tracker})


async def test_announces_fail_over_to_the_next_https_tracker(
    tracker: Tracker, pki: Pki, caplog: pytest.LogCaptureFixture,
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    metrics = Metrics("t")
    listed = preferring(dead, tracker.addr, metrics)
    relay = await AnnounceRelay.start(listed, HttpClientConfig(), tls_config(pki), "0.0.0.0", metrics)
    try:
        for _ in range(3):
            assert await get(relay.url + "?left=1") == (200, tracker.body)
    finally:
        await relay.close()
    assert tracker.seen == [("/announce?left=1", "libtorrent/2.1.1.0", True)] * 3
    assert listed.order() == [tracker.addr, dead]  # the dead one is tried last for a while
    assert sample(metrics, "tracker_failovers_total", dead) == 1  # once: then it is tried last
    assert sample(metrics, "tracker_up", dead) == 0 and sample(metrics, "tracker_up", tracker.addr) == 1
    assert [r.getMessage() for r in caplog.records].count("tracker failover") == 1


async def test_two_plain_http_trackers_get_a_relay_that_fails_over(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics("t")
    async with serving(None) as first, serving(None) as second, AsyncExitStack() as stack:
        plain = create_client(HttpClientConfig())
        stack.push_async_callback(plain.close)
        listed = preferring(first.addr, second.addr, metrics)
        url = await announce_url(stack, listed, plain, HttpClientConfig(), TLSConfig(), "0.0.0.0", metrics)
        assert url.startswith("http://127.0.0.1:") and first.addr not in url and second.addr not in url
        assert (await get(url + "?left=1"))[0] == 200
        await first.stop()
        assert (await get(url + "?left=2"))[0] == 200
        assert (await get(url + "?left=3"))[0] == 200
    assert [seen[0] for seen in first.seen] == ["/announce?left=1"]
    assert [seen[0] for seen in second.seen] == ["/announce?left=2", "/announce?left=3"]
    assert sample(metrics, "tracker_failovers_total", first.addr) == 1
    assert sample(metrics, "tracker_up", first.addr) == 0
    failover = [r for r in caplog.records if r.getMessage() == "tracker failover"]
    assert len(failover) == 1 and failover[0].kraken_fields["tracker"] == first.addr  # type: ignore[attr-defined]


async def test_a_tracker_that_accepts_and_never_answers_leaves_time_for_the_next() -> None:
    """The relay's whole budget (libtorrent waits 10 s) is shared between the trackers: the
    hung one gets half, the next answers well within the rest."""
    hung: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    hung_addr = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with serving(None) as alive:
        listed = preferring(hung_addr, alive.addr, Metrics("t"))
        relay = await AnnounceRelay.start(listed, HttpClientConfig(), TLSConfig(), "0.0.0.0", Metrics("t"))
        try:
            started = asyncio.get_running_loop().time()
            assert (await get(relay.url + "?left=1"))[0] == 200
            assert asyncio.get_running_loop().time() - started < 8
        finally:
            await relay.close()
            server.close()
            for writer in hung:
                writer.close()
    assert [seen[0] for seen in alive.seen] == ["/announce?left=1"]
