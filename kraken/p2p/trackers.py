"""Several trackers, and failing over between them (agents and origins).

Trackers are stateless in front of one shared peer store (Redis, ``store: redis`` in the
tracker's config), so any tracker answers any request as well as another: a component
lists them all (``addrs``, or a DNS name, ``dns``, resolving to several; ``addr`` names one)
and sends each request to the first that answers. The list, its order (this host's preferred
tracker first), DNS re-resolution and the down periods of a tracker that failed are
:mod:`kraken.http.hostlist`'s, shared with the build-index clients; this module adds:

- **Failover.** A connection failure or a timeout moves the request to the next tracker at
  once, within the request's own time budget (:meth:`TrackerList.call`), and so does a
  502/503/504 (a tracker that lost its own connection to the store, or is draining); any other
  answer is the answer.
- **Start.** ``dns`` must resolve when the component starts (as in Kraken, the start fails fast).

Each failover is logged (``tracker failover``, with the tracker left and the reason) and
counted in ``kraken_<component>_tracker_failovers_total``; ``kraken_<component>_tracker_up``
is 0 for a tracker from its failure until it answers again.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from kraken.http.addresses import resolve
from kraken.http.client import HTTPStatusError
from kraken.http.hostlist import DOWN_MIN, HostList, HostListConfig, Resolver
from kraken.log import get_logger
from kraken.metrics import Metrics

log = get_logger("p2p.trackers")

T = TypeVar("T")

#: What makes a request move to the next tracker: the tracker did not answer.
FAILOVER_ERRORS = (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)
#: Answers that also do: a tracker that lost its own store, or is draining, says so with these
#: (as the build-index client fails over on them); any other status is the answer.
FAILOVER_STATUSES = (502, 503, 504)


@dataclass
class TrackersConfig(HostListConfig):
    """The ``tracker:`` section of agents and origins (:class:`HostListConfig`); all empty:
    no tracker."""


class TrackerList:
    """The trackers of one component, in failover order; :meth:`start` it."""

    def __init__(self, config: TrackersConfig, metrics: Metrics, resolver: Resolver = resolve,
                 hostname: str | None = None) -> None:
        self.config = config
        self.hosts = HostList(config, "tracker", resolver, hostname)
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
        return self.hosts.addrs

    def describe(self) -> str:
        """For logs: the DNS name and the addresses."""
        dns = [f"dns:{self.config.dns}"] if self.config.dns else []
        return ",".join([*dns, *(a for a in self.hosts.addrs if a != self.config.dns)]) or "-"

    async def start(self) -> None:
        """Resolve ``dns``; a failure is fatal."""
        await self.hosts.start()
        self._publish()

    def order(self) -> list[str]:
        """The trackers to try for one request (:meth:`HostList.order`)."""
        return self.hosts.order()

    async def call(self, attempt: Callable[[str], Awaitable[T]], budget: float | None = None) -> T:
        """``attempt(addr)`` on each tracker in :meth:`order` until one answers (returns
        without one of :data:`FAILOVER_ERRORS`); the last error if none does. ``budget``
        bounds the whole call (a due DNS lookup included): each attempt gets an equal share of
        what is left, so a tracker that hangs leaves time for the next."""
        deadline = None if budget is None else time.monotonic() + budget
        if await self.hosts.refresh():
            self._publish()
        order = self.order()
        if not order:
            raise ConnectionError("no tracker is configured")
        for i, addr in enumerate(order):
            try:
                if deadline is None:
                    result = await attempt(addr)
                else:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic()) / (len(order) - i)):
                        result = await attempt(addr)
            except (*FAILOVER_ERRORS, HTTPStatusError) as e:
                if isinstance(e, HTTPStatusError) and e.status not in FAILOVER_STATUSES:
                    raise
                self._failed(addr, e, order[i + 1] if i + 1 < len(order) else None)
                if i + 1 == len(order):
                    raise
                continue
            if self.hosts.answered(addr):
                self._up.labels(addr).set(1)
                log.info("tracker answers again", tracker=addr)
            return result
        raise AssertionError("unreachable")

    def _failed(self, addr: str, error: BaseException, next_addr: str | None) -> None:
        period = self.hosts.failed(addr)
        if next_addr is not None:
            self._failovers.labels(addr).inc()
        if period is None:  # already tried last: requests on their way to it when it failed
            return
        self._up.labels(addr).set(0)
        reason = f"{type(error).__name__}: {error}"
        if next_addr is not None:
            log.warning("tracker failover", tracker=addr, to=next_addr, error=reason, tried_last_for=f"{period:g}s")
        elif period == DOWN_MIN:  # once per outage: the callers log their own failures
            log.warning("tracker unreachable, no other to fail over to", tracker=addr, error=reason)

    def _publish(self) -> None:
        self._up.clear()
        for addr in self.hosts.addrs:
            self._up.labels(addr).set(0 if self.hosts.is_down(addr) else 1)
