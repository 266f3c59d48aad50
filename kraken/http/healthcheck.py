"""Which hosts of a ring are healthy, as one client of the ring sees them: Kraken's active and
passive health checks (its lib/healthcheck), combined into one healthy set.

Active: :meth:`HostHealth.run`, a background task owned by the component's app, asks every
host's ``GET /health`` each ``interval`` (each check bounded by ``timeout``). Thresholds keep
one lost check from dropping a host (``fails`` in a row) and one lucky answer from bringing a
flapping host back (``passes`` in a row). Passive: a request that fails to connect or times
out is reported with :meth:`HostHealth.failed`; ``fails`` of them within ``fail_timeout`` take
the host out at once, without waiting for the checks, and with active checks off they are the
only signal. A host taken out passively rejoins after ``fail_timeout``, or sooner once the
active checks have seen it pass ``passes`` times since.

Every change of the set is logged (a host leaving, with why; a host rejoining) and shown by
:class:`RingMetrics`. The set is what :class:`kraken.ring.HashRing` picks owners from.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.ring import HealthCheckConfig, PassiveConfig

log = get_logger("kraken.http.healthcheck")

#: Checks one host; raises (anything) when the host is not healthy.
Probe = Callable[[str], Awaitable[None]]


class RingMetrics:
    """The ring's view in a component's metrics: each host's health and the calls moved."""

    def __init__(self, metrics: Metrics) -> None:
        self.host_healthy = metrics.gauge(
            "kraken_ring_host_healthy", "1 while the ring host is in this process's healthy set, else 0", ["host"])
        self.failovers = metrics.counter(
            "kraken_ring_failovers_total",
            "Calls moved to the next ring host because one failed to connect or timed out")


class HostHealth:
    """The healthy subset of a fixed list of hosts. Every host starts healthy, so a client
    works before the first round of checks."""

    def __init__(self, hosts: Sequence[str], active: HealthCheckConfig, passive: PassiveConfig,
                 metrics: RingMetrics, what: str = "host", clock: Callable[[], float] = time.monotonic) -> None:
        self.hosts = tuple(dict.fromkeys(hosts))
        self._active = active
        self._passive = passive
        self._metrics = metrics
        self._what = what
        self._clock = clock
        self._fails = dict.fromkeys(self.hosts, 0)  # consecutive failed checks
        self._passes = dict.fromkeys(self.hosts, 0)  # consecutive passed checks (since a passive mark)
        self._down_active: set[str] = set()
        self._failures: dict[str, deque[float]] = {h: deque() for h in self.hosts}
        self._down_until: dict[str, float] = {}
        self._why: dict[str, str] = {}
        self._shown = set(self.hosts)
        for host in self.hosts:
            metrics.host_healthy.labels(host).set(1)

    def healthy(self) -> list[str]:
        """The healthy hosts, in the configured order; logs and shows any change since the
        last call (passive marks expire here)."""
        now = self._clock()
        self._down_until = {h: t for h, t in self._down_until.items() if t > now}
        alive = [h for h in self.hosts if h not in self._down_active and h not in self._down_until]
        self._show(alive)
        return alive

    def failed(self, host: str, error: BaseException) -> None:
        """A request to ``host`` failed to connect or timed out (not an HTTP error status:
        that host answered)."""
        if host not in self._failures:
            return
        now = self._clock()
        failures = self._failures[host]
        while failures and failures[0] <= now - self._passive.fail_timeout:
            failures.popleft()
        failures.append(now)
        if len(failures) >= self._passive.fails:
            failures.clear()
            self._down_until[host] = now + self._passive.fail_timeout
            self._passes[host] = 0
            self._why.setdefault(host, f"{self._passive.fails} failed requests within "
                                       f"{self._passive.fail_timeout:g}s, last {type(error).__name__}: {error}")
        self.healthy()

    def checked(self, host: str, error: str | None) -> None:
        """One active check of ``host``: passed (``error`` None) or failed, and why."""
        if error is None:
            self._fails[host] = 0
            self._passes[host] += 1
            if self._passes[host] >= self._active.passes:
                self._down_active.discard(host)
                self._down_until.pop(host, None)
        else:
            self._passes[host] = 0
            self._fails[host] += 1
            if self._fails[host] >= self._active.fails and host not in self._down_active:
                self._down_active.add(host)
                self._why.setdefault(host, f"{self._fails[host]} failed health checks in a row, last {error}")

    def _show(self, alive: list[str]) -> None:
        now_alive = set(alive)
        for host in self.hosts:
            if host in self._shown and host not in now_alive:
                log.warning(f"{self._what} left the healthy set", host=host, reason=self._why.get(host, "unknown"))
                self._metrics.host_healthy.labels(host).set(0)
            elif host not in self._shown and host in now_alive:
                log.info(f"{self._what} rejoined the healthy set", host=host)
                self._metrics.host_healthy.labels(host).set(1)
        for host in now_alive:
            self._why.pop(host, None)
        self._shown = now_alive

    async def run(self, probe: Probe) -> None:
        """Check every host each ``interval`` until cancelled; with ``interval`` 0, return at once."""
        if self._active.interval <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.check_all(probe)
            await asyncio.sleep(max(0.0, self._active.interval - (loop.time() - started)))

    async def check_all(self, probe: Probe) -> None:
        """One round: every host checked at once, each within ``timeout``."""
        await asyncio.gather(*(self._check(probe, host) for host in self.hosts))
        self.healthy()

    async def _check(self, probe: Probe, host: str) -> None:
        try:
            await asyncio.wait_for(probe(host), self._active.timeout)
        except Exception as e:  # noqa: BLE001 - whatever stops a check, the host did not pass it
            self.checked(host, f"{type(e).__name__}: {e}")
        else:
            self.checked(host, None)
