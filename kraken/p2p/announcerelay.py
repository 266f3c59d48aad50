"""The announce relay: libtorrent's announces sent on by Python, to an HTTPS tracker with the
host's client certificate and only the cluster CAs trusted, and to whichever of several
trackers answers.

libtorrent cannot do either for an ordinary torrent: its tracker connections present no client
certificate, and it takes a CA only from ``SSL_CERT_FILE`` and trusts the system bundles
besides (``../shared/reference/tls.md``, sections 1.2 and 2.1). So when the tracker is HTTPS
(the component's ``tls:`` section calls over TLS), libtorrent announces over plain HTTP to a
small server inside the same process, which forwards each announce to the tracker through
Kraken's HTTP client (:func:`~kraken.http.client.create_client`): trusting ``tls.cas`` only,
checking ``tls.name``, presenting ``tls.client`` when one is configured.

With several trackers (``tracker.addrs`` or ``tracker.dns``, over HTTP or HTTPS) the relay
is what makes announces survive the loss of one: libtorrent knows one URL, the relay's, and
each announce goes to the first tracker that answers (:class:`~kraken.p2p.trackers.
TrackerList`, shared with the component's other tracker calls), so a tracker killed
mid-download costs no announce. The trackers share one peer store, so a peer announced to
one is handed out by the others.

- The query string is forwarded byte for byte (``info_hash`` and ``peer_id`` are
  percent-encoded bytes; re-encoding would change them) to the tracker's ``/announce``, the
  only path the relay serves (anything else: 404; libtorrent's SSRF mitigation only lets a
  loopback tracker's path start with ``/announce``).
- The tracker takes the peer's address from the connection, which is now the relay's: the
  same host, so the address handed to other peers stays right (the port is the ``port``
  parameter, untouched).
- It listens on loopback (a free port), or on the P2P listen address when that is one
  specific address: libtorrent binds its announces to the listen socket's interface, and one
  bound to an Ethernet device never reaches 127.0.0.1 (measured). There it answers only
  this host's own address (others: 403, the connection closed, logged through
  :class:`~kraken.http.allow.AllowList`).
- Bounded: :data:`MAX_CONNECTIONS` connections (the server's and the upstream's), the
  component's ``http_client`` connect and read timeouts with a whole-request limit of
  :data:`ANSWER_TIMEOUT` (libtorrent stops waiting after 10 s; with several trackers each
  attempt gets an equal share of what is left), no retries of one tracker (libtorrent retries
  with backoff), answers up to :data:`MAX_ANSWER` bytes (a 50-peer compact answer is under
  1 KiB), anything larger is refused with 502.

One relay serves one component's tracker list (:func:`announce_url`). The relay is started
before the P2P session and closed after it, so the "stopped" announces at close still reach
the tracker.
"""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from contextlib import AsyncExitStack

import aiohttp
from aiohttp import web
from aiohttp.web_request import BaseRequest
from yarl import URL

from kraken.http.allow import AllowList, peer_address
from kraken.http.client import HttpClient, create_client
from kraken.http.config import HttpClientConfig, HttpServerConfig, TLSConfig
from kraken.http.server import GuardedServer
from kraken.http.urls import base_url
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.p2p.trackers import FAILOVER_ERRORS, TrackerList
from kraken.tasks import TaskOwner

log = get_logger("p2p.relay")

ANNOUNCE_PATH = "/announce"
#: Connections to the relay, and from it to the tracker, open at once.
MAX_CONNECTIONS = 64
#: Longest answer forwarded to libtorrent.
MAX_ANSWER = 1 << 20
#: Whole-request limit upstream: libtorrent's ``tracker_receive_timeout`` is 10 s.
ANSWER_TIMEOUT = 10.0
#: The relay's own connections: libtorrent sends a request at once and reads its answer.
_SERVER_LIMITS = HttpServerConfig(header_timeout=5.0, body_timeout=5.0, write_timeout=10.0, idle_timeout=30.0,
                                  max_connections=MAX_CONNECTIONS)
_BENCODED = "text/plain"


def relay_host(p2p_host: str) -> str:
    """Where the relay listens for a P2P session listening on ``p2p_host``: loopback of the
    same family for a wildcard (libtorrent then also announces from its loopback socket), the
    address itself when it is one specific address (loopback or not)."""
    try:
        ip = ipaddress.ip_address(p2p_host.strip("[]"))
    except ValueError:
        return "127.0.0.1"
    if ip.is_unspecified:
        return "::1" if ip.version == 6 else "127.0.0.1"
    return str(ip)


class AnnounceRelay:
    """The relay to a list of trackers; :meth:`start` it, :meth:`close` it."""

    def __init__(self, trackers: TrackerList, http: HttpClient, host: str, metrics: Metrics, label: str) -> None:
        self.trackers = trackers
        self.host = host
        self.url = ""
        self._http = http
        self._label = label
        self._server = GuardedServer(self._handle, limits=_SERVER_LIMITS, metrics=metrics, port=label)
        self._listener: asyncio.Server | None = None
        # Loopback needs no check; on a specific address, outsiders can connect and are refused
        # (logged with the allow-list's bound, so a scan cannot flood the log).
        self._allow = None if host in ("127.0.0.1", "::1") else AllowList([host], name="the announce relay's host")
        self._tasks = TaskOwner("announce-relay")
        self._failing = False
        self._reached = ""

    @classmethod
    async def start(cls, trackers: TrackerList, http_client: HttpClientConfig, tls: TLSConfig, p2p_host: str,
                    metrics: Metrics, label: str = "announce-relay") -> AnnounceRelay:
        """Listen on a free port of :func:`relay_host` and forward to the first of ``trackers``
        that answers."""
        total = min(http_client.total_timeout or ANSWER_TIMEOUT, ANSWER_TIMEOUT)
        upstream = dataclasses.replace(http_client, max_connections=MAX_CONNECTIONS, retries=0, total_timeout=total)
        http = create_client(upstream, tls)
        self = cls(trackers, http, relay_host(p2p_host), metrics, label)
        try:
            loop = asyncio.get_running_loop()
            self._listener = await loop.create_server(self._server, self.host, 0)
        except BaseException:
            await http.close()
            raise
        port = self._listener.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = base_url(f"{host}:{port}") + ANNOUNCE_PATH
        self._tasks.spawn(self._server.watch(), "watchdog")
        log.info("announce relay started", url=self.url, tracker=trackers.describe(),
                 client_certificate=tls.client.configured())
        return self

    async def close(self) -> None:
        await self._tasks.close()
        if self._listener is not None:
            self._listener.close()
            await self._server.shutdown(1.0)
            await self._listener.wait_closed()
        await self._http.close()

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        if request.method != "GET" or request.path != ANNOUNCE_PATH:
            return web.Response(status=404, text="the announce relay serves GET /announce only\n")
        if self._allow is not None:
            address = peer_address(request)
            if not self._allow.allows(address):
                self._allow.refused(address, request)
                refused = web.Response(status=403, text="the announce relay serves this host only\n")
                refused.force_close()  # no idle keep-alive holding one of the MAX_CONNECTIONS slots
                return refused
        query = _raw_query(request.raw_path)
        headers = {"User-Agent": request.headers.get("User-Agent", "")}

        async def forward(addr: str) -> tuple[str, int, bytes | None]:
            url = URL(self._http.url(addr, ANNOUNCE_PATH) + query, encoded=True)
            resp = await self._http.request("GET", url, ok=tuple(range(100, 600)), retry=False, headers=headers)
            try:
                return addr, resp.status, await _read_bounded(resp)
            finally:
                resp.release()

        try:
            addr, status, body = await self.trackers.call(forward, ANSWER_TIMEOUT)
        except (*FAILOVER_ERRORS, aiohttp.ClientError) as e:
            return self._failed(f"tracker unreachable: {type(e).__name__}: {e}")
        if body is None:
            return self._failed(f"tracker answer larger than {MAX_ANSWER} bytes")
        if self._failing or self._reached != addr:
            # At the first answer, after each outage and at each change of tracker: the path
            # works end to end, through this tracker.
            log.info("announce relay reaches the tracker", tracker=addr, status=status)
            self._failing, self._reached = False, addr
        return web.Response(status=status, body=body, content_type=_BENCODED)

    def _failed(self, reason: str) -> web.Response:
        """502 to libtorrent (which logs a tracker error and retries); logged here once per
        outage rather than at every announce."""
        if not self._failing:
            self._failing = True
            log.warning("announce relay cannot forward", tracker=self.trackers.describe(), reason=reason)
        return web.Response(status=502, text=reason + "\n")


def _raw_query(raw_path: str) -> str:
    """``?`` and the query string exactly as sent (``""`` without one). Only the query travels:
    the raw target may be in absolute form (``http://host/announce?...``) or spell the path
    differently (``/%61nnounce``), and neither may reach the tracker's URL; yarl's parsed query
    is re-quoted, which would change the bytes."""
    query = raw_path.partition("#")[0].partition("?")[2]
    return "?" + query if query else ""


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes | None:
    """The body, or ``None`` once it exceeds :data:`MAX_ANSWER` (whatever Content-Length says)."""
    if resp.content_length is not None and resp.content_length > MAX_ANSWER:
        return None
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 << 10):
        body += chunk
        if len(body) > MAX_ANSWER:
            return None
    return bytes(body)


async def announce_url(stack: AsyncExitStack, trackers: TrackerList, http: HttpClient, http_client: HttpClientConfig,
                       tls: TLSConfig, p2p_host: str, metrics: Metrics) -> str:
    """The URL libtorrent announces to ``trackers`` with: the tracker's own when there is one
    tracker called over plain HTTP, else a relay's, started now and closed by ``stack``
    (enter it before the P2P session, so it closes after)."""
    if not http.secure and not trackers.config.several():
        return http.url(trackers.addrs[0], ANNOUNCE_PATH)
    relay = await AnnounceRelay.start(trackers, http_client, tls, p2p_host, metrics)
    stack.push_async_callback(relay.close)
    return relay.url
