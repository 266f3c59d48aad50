"""Who may call a server, by the address its connection comes from (Kraken's ``allowed_cidrs``).

An :class:`AllowList` holds networks; :func:`allow_middleware` answers 403 to a request whose
peer is in none of them. The peer is the connection's source address, never a header
(``X-Forwarded-For`` is whatever the caller wants it to be). How the 403 looks is the app's
choice (``deny``): OCI error JSON ``DENIED`` on a registry port, ``{"error"}`` on an internal
API. ``/health`` stays open to everyone: a supervisor or load balancer probing liveness learns
nothing from ``OK``.

A refused address is logged once (the first refusal), and at most :data:`LOG_BURST` new
addresses per :data:`LOG_WINDOW` seconds, so a scan of the port cannot flood the log; every
refusal is counted in ``kraken_http_denied_total``.
"""
from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest

from kraken.http.addresses import IPAddress
from kraken.http.app import Handler
from kraken.log import get_logger
from kraken.metrics import Metrics

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Loopback and Docker's default bridge (containers on this host): Kraken's agent default.
DEFAULT_ALLOWED_CIDRS = ["127.0.0.0/8", "::1/128", "172.17.0.0/16"]
#: Paths answered whatever the caller's address.
OPEN_PATHS = frozenset({"/health"})
#: Distinct refused addresses remembered (not logged again); beyond, the memory starts over.
MAX_REMEMBERED = 4096
LOG_WINDOW = 60.0
LOG_BURST = 20

log = get_logger("kraken.http")


def parse_networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    """``["127.0.0.0/8", "::1"]`` -> networks; a bare address is a one-address network. A
    mistyped entry raises ValueError (at config load, not at the first request)."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(str(cidr).strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"allowed_cidrs: {cidr!r} is not an address or CIDR: {e}") from None
    return networks


def peer_address(request: BaseRequest) -> IPAddress | None:
    """The source address of the request's connection (an IPv4-mapped IPv6 address as IPv4),
    or None when it has none (a unix socket, a closed transport)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _local_port(request: BaseRequest) -> str:
    """The port the request came in on (its socket's, not the Host header's)."""
    transport = request.transport
    local = transport.get_extra_info("sockname") if transport is not None else None
    return str(local[1]) if isinstance(local, tuple) and len(local) > 1 else ""


class AllowList:
    """The networks a server's callers must come from, and the bounded log of refusals. One
    instance may guard several apps (the agent's two ports share one)."""

    def __init__(self, cidrs: Iterable[str], metrics: Metrics | None = None, name: str = "allowed_cidrs") -> None:
        self.networks = parse_networks(cidrs)
        self.name = name
        self._seen: set[str] = set()
        self._window_start = 0.0
        self._logged_in_window = 0
        self._suppressed = 0
        self._denied = metrics.counter(
            "kraken_http_denied_total", "Requests refused (403) because of the caller's address", ["port"]
        ) if metrics is not None else None

    def allows(self, address: IPAddress | None) -> bool:
        if address is None:
            return False
        return any(address.version == net.version and address in net for net in self.networks)

    def refused(self, address: IPAddress | None, request: BaseRequest) -> None:
        """Count a refusal; log it if this address was not logged yet and the rate allows."""
        if self._denied is not None:
            self._denied.labels(_local_port(request)).inc()
        key = str(address)
        if key in self._seen:
            return
        now = time.monotonic()
        if now - self._window_start >= LOG_WINDOW:
            self._window_start, self._logged_in_window = now, 0
        if self._logged_in_window >= LOG_BURST:
            self._suppressed += 1
            return
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()
        self._seen.add(key)
        self._logged_in_window += 1
        suppressed, self._suppressed = self._suppressed, 0
        log.warning("request refused: caller not in " + self.name, peer=key, method=request.method,
                    path=request.path, unlogged_refusals=suppressed)


def allow_middleware(allow: AllowList, deny: Callable[[str], Exception]) -> Middleware:
    """A middleware refusing callers outside ``allow``: ``deny(address)`` is raised (an
    exception that renders itself, such as a registry error or
    :class:`~kraken.http.errors.JsonError`)."""

    @web.middleware
    async def check_caller(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        address = peer_address(request)
        if not allow.allows(address):
            allow.refused(address, request)
            raise deny(str(address))
        return await handler(request)

    return check_caller


def guard(app: web.Application, allow: AllowList, deny: Callable[[str], Exception]) -> None:
    """Install the allow-list on ``app`` right after the error middleware of
    :func:`kraken.http.app.create_app`, so it runs before any other (a refused request does
    no work) and its 403 is access-logged and counted like any answer."""
    app.middlewares.insert(1, allow_middleware(allow, deny))
