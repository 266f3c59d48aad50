"""Several trackers, and failing over between them (agents and origins).

Trackers are stateless in front of one shared peer store (Redis, ``store: redis`` in the
tracker's config), so any tracker answers any request as well as another: a component
lists them all (``addrs``, or a DNS name, ``dns``, resolving to several; ``addr`` names one)
and sends each request to the first that answers.

- **Order.** Every host prefers the tracker at a position derived from its hostname, then
  the others in the listed order (a DNS answer is sorted first, so every host sees one
  order): processes on one host agree on their tracker, and a fleet spreads over all of them.
- **Failover.** A connection failure or a timeout moves the request to the next tracker at
  once, within the request's own time budget (:meth:`TrackerList.call`); the failed tracker
  is then tried last for :data:`DOWN_MIN` seconds, doubling at each further failure up to
  :data:`DOWN_MAX`, so a dead tracker costs one failed connection per period rather than one
  per request, and a tracker that is back gets its share again. Answers, whatever their
  status, are not failures: a 5xx from one tracker would come from the others too (the
  store they share is down).
- **DNS.** Re-resolved every ``dns_ttl`` (Kraken's hostlist does the same, 5 s by default);
  a failed lookup keeps the last answer. The first lookup must succeed (as in Kraken, the
  start fails fast).

Each failover is logged (``tracker failover``, with the tracker left and the reason) and
counted in ``kraken_<component>_tracker_failovers_total``; ``kraken_<component>_tracker_up``
is 0 for a tracker from its failure until it answers again.
"""
from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp

from kraken.config import Duration
from kraken.http.addresses import IPAddress, resolve, split_host_port
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.tasks import TaskOwner

log = get_logger("p2p.trackers")

T = TypeVar("T")

#: How long a tracker that failed is tried last, at first; doubled at each further failure.
DOWN_MIN = 5.0
DOWN_MAX = 300.0
#: Longest a DNS lookup may take.
RESOLVE_TIMEOUT = 5.0
#: What makes a request move to the next tracker: the tracker did not answer.
FAILOVER_ERRORS = (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)


@dataclass
class TrackersConfig:
    """The trackers: ``dns`` (a ``name:port`` resolving to several addresses, re-resolved
    every ``dns_ttl``) if given, else ``addrs`` (several ``host:port``) if given, else
    ``addr`` (one); all empty: none. The first given wins rather than all adding up, so a
    config that lists ``addrs`` over one that ``extends:`` a base with an ``addr`` (the agent's
    ``localhost:15003``) gets exactly its list."""

    addr: str = ""
    addrs: list[str] = field(default_factory=list)
    dns: str = ""
    dns_ttl: Duration = 5.0

    def __post_init__(self) -> None:
        for entry in (self.addr, *self.addrs, self.dns):
            if not entry:
                continue
            try:
                split_host_port(entry)
            except ValueError:
                raise ValueError(f"tracker address {entry!r} is not host:port") from None
        if self.dns_ttl <= 0:
            raise ValueError("tracker.dns_ttl must be positive")

    def static(self) -> list[str]:
        """The listed addresses that apply, each once (none when ``dns`` is given)."""
        if self.dns:
            return []
        return list(dict.fromkeys(self.addrs)) if self.addrs else [self.addr] if self.addr else []

    def configured(self) -> bool:
        return bool(self.static() or self.dns)

    def several(self) -> bool:
        """Whether there may be more than one tracker (then requests can fail over)."""
        return bool(self.dns) or len(self.static()) > 1


def host_offset(count: int, hostname: str | None = None) -> int:
    """This host's preferred position in a list of ``count`` trackers."""
    name = (hostname or socket.gethostname()).encode()
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big") % max(count, 1)


def _addr(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


Resolver = Callable[[str, float], Awaitable[list[IPAddress] | None]]


class TrackerList:
    """The trackers of one component, in failover order; :meth:`start` it, :meth:`close` it."""

    def __init__(self, config: TrackersConfig, metrics: Metrics, resolver: Resolver = resolve,
                 hostname: str | None = None) -> None:
        self.config = config
        self._resolver = resolver
        self._hostname = hostname
        self._addrs: tuple[str, ...] = tuple(config.static())
        self._offset = host_offset(len(self._addrs), hostname)
        # addr -> (monotonic time until which it is tried last, its current down period)
        self._down: dict[str, tuple[float, float]] = {}
        self._tasks = TaskOwner("trackers")
        self._failovers = metrics.counter(
            f"kraken_{metrics.component}_tracker_failovers_total",
            "Requests moved past a tracker that did not answer, by that tracker", ["tracker"])
        self._up = metrics.gauge(
            f"kraken_{metrics.component}_tracker_up",
            "0 from a tracker's failure until it answers again, else 1", ["tracker"])
        self._publish()

    @property
    def addrs(self) -> tuple[str, ...]:
        """Every tracker, in this host's preference order (healthy or not)."""
        return self._addrs[self._offset:] + self._addrs[:self._offset]

    def describe(self) -> str:
        """For logs: the addresses and the DNS name."""
        return ",".join([*([f"dns:{self.config.dns}"] if self.config.dns else []), *self._addrs]) or "-"

    async def start(self) -> None:
        """Resolve ``dns`` (a failure is fatal) and keep it fresh."""
        if not self.config.dns:
            return
        if not await self._refresh():
            raise ConnectionError(f"tracker.dns {self.config.dns!r} does not resolve")
        self._tasks.spawn(self._keep_resolving(), "dns")

    async def close(self) -> None:
        await self._tasks.close()

    def order(self) -> list[str]:
        """The trackers to try for one request: those believed up in preference order, then
        those that failed recently, the one that failed longest ago first."""
        now = time.monotonic()
        up = [a for a in self.addrs if self._down.get(a, (0.0, 0.0))[0] <= now]
        down = sorted((a for a in self.addrs if a not in up), key=lambda a: self._down[a][0])
        return up + down

    async def call(self, attempt: Callable[[str], Awaitable[T]], budget: float | None = None) -> T:
        """``attempt(addr)`` on each tracker in :meth:`order` until one answers (returns
        without one of :data:`FAILOVER_ERRORS`); the last error if none does. ``budget``
        bounds the whole call: each attempt gets an equal share of what is left, so a
        tracker that hangs leaves time for the next."""
        order = self.order()
        if not order:
            raise ConnectionError("no tracker address is known (tracker.dns resolves to nothing)")
        deadline = None if budget is None else time.monotonic() + budget
        for i, addr in enumerate(order):
            try:
                if deadline is None:
                    result = await attempt(addr)
                else:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic()) / (len(order) - i)):
                        result = await attempt(addr)
            except FAILOVER_ERRORS as e:
                self._failed(addr, e, order[i + 1] if i + 1 < len(order) else None)
                if i + 1 == len(order):
                    raise
                continue
            self._answered(addr)
            return result
        raise AssertionError("unreachable")

    def _failed(self, addr: str, error: BaseException, next_addr: str | None) -> None:
        now = time.monotonic()
        until, last = self._down.get(addr, (0.0, 0.0))
        if until > now:
            # Already tried last: requests that were on their way to it when it failed.
            if next_addr is not None:
                self._failovers.labels(addr).inc()
            return
        period = min(last * 2, DOWN_MAX) if last else DOWN_MIN
        self._down[addr] = (now + period, period)
        self._up.labels(addr).set(0)
        if next_addr is None:
            if not last:  # once per outage: the callers log their own failures
                log.warning("tracker unreachable, no other to fail over to", tracker=addr,
                            error=f"{type(error).__name__}: {error}")
            return
        self._failovers.labels(addr).inc()
        log.warning("tracker failover", tracker=addr, to=next_addr, error=f"{type(error).__name__}: {error}",
                    tried_last_for=f"{period:g}s")

    def _answered(self, addr: str) -> None:
        if self._down.pop(addr, None) is not None:
            self._up.labels(addr).set(1)
            log.info("tracker answers again", tracker=addr)

    async def _keep_resolving(self) -> None:
        while True:
            await asyncio.sleep(self.config.dns_ttl)
            await self._refresh()

    async def _refresh(self) -> bool:
        """Look ``dns`` up again; False (the last answer kept) when the lookup fails."""
        host, port = split_host_port(self.config.dns)
        ips = await self._resolver(host, RESOLVE_TIMEOUT)
        if not ips:
            return False
        resolved = [_addr(ip, port) for ip in sorted(ips, key=_ip_key)]
        if tuple(resolved) != self._addrs:
            log.info("tracker dns resolved", dns=self.config.dns, addrs=",".join(resolved))
            self._addrs = tuple(resolved)
            self._offset = host_offset(len(self._addrs), self._hostname)
            self._down = {a: d for a, d in self._down.items() if a in self._addrs}
            self._publish()
        return True

    def _publish(self) -> None:
        self._up.clear()
        now = time.monotonic()
        for addr in self._addrs:
            self._up.labels(addr).set(0 if self._down.get(addr, (0.0, 0.0))[0] > now else 1)


def _ip_key(ip: IPAddress) -> tuple[int, bytes]:
    return ip.version, ip.packed

