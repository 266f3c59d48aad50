"""A list of interchangeable hosts and the order to try them in, written once for the clients
of every fleet whose members answer alike (trackers sharing Redis, build-indexes sharing a
tag backend): Kraken's ``lib/hostlist`` plus the failover bookkeeping both clients need.

- **Config** (:class:`HostListConfig`, Kraken's hostlist): ``addr`` (one ``host:port``),
  ``addrs`` (several; Kraken's ``static``) or ``dns`` (a ``name:port`` whose every address is a
  host). ``dns`` wins over ``addr`` and ``addrs`` over ``addr``, so a config that ``extends:`` a
  base with an ``addr`` gets exactly its list; ``addrs`` and ``dns`` together are an error, as
  in Kraken (which of the two was meant cannot be guessed).
- **DNS.** The answer is used for ``dns_ttl`` and looked up again on the next use after that
  (as Kraken's list does: no lookups while idle), one lookup at a time; a failed or empty
  lookup keeps the last answer. :meth:`HostList.start` makes the first lookup a condition of a
  component's start (Kraken fails fast); without it, the name itself stands in until it
  first resolves, so requests fail with an error naming it.
- **Order.** Every host prefers the entry at a position derived from its hostname, then the
  others in the listed order (a DNS answer is sorted, so every host sees one order): the
  processes of one host agree, and a fleet spreads over all the entries.
- **Down periods.** An entry that failed is tried last for :data:`DOWN_MIN` seconds, doubling
  at each further failure up to :data:`DOWN_MAX`: a dead host costs one failed attempt per
  period rather than one per request, and a host that is back gets its share again once it
  answers. What counts as a failure is the client's call (:meth:`HostList.failed`).
"""
from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kraken.config import Duration
from kraken.http.addresses import IPAddress, resolve, split_host_port
from kraken.log import get_logger

log = get_logger("kraken.http.hostlist")

#: How long an entry that failed is tried last, at first; doubled at each further failure.
DOWN_MIN = 5.0
DOWN_MAX = 300.0
#: Longest a DNS lookup may take (it may sit on a request's path).
RESOLVE_TIMEOUT = 2.0

Resolver = Callable[[str, float], Awaitable[list[IPAddress] | None]]


@dataclass
class HostListConfig:
    """``addr``, ``addrs``, ``dns``, ``dns_ttl``: see the module. All empty: no host."""

    addr: str = ""
    addrs: list[str] = field(default_factory=list)
    dns: str = ""
    dns_ttl: Duration = 5.0

    def __post_init__(self) -> None:
        if self.addrs and self.dns:
            raise ValueError("give addrs or dns, not both")
        for entry in (self.addr, *self.addrs, self.dns):
            if entry:
                split_host_port(entry)
        if self.dns_ttl <= 0:
            raise ValueError(f"dns_ttl must be positive, got {self.dns_ttl}")

    def static(self) -> list[str]:
        """The listed addresses that apply, each once (none when ``dns`` is given)."""
        if self.dns:
            return []
        return list(dict.fromkeys(self.addrs)) if self.addrs else [self.addr] if self.addr else []

    def configured(self) -> bool:
        return bool(self.dns or self.static())

    def several(self) -> bool:
        """Whether there may be more than one host (then requests can fail over)."""
        return bool(self.dns) or len(self.static()) > 1

    def describe(self) -> str:
        """For logs: the DNS name, else the addresses."""
        return f"dns:{self.dns}" if self.dns else ",".join(self.static()) or "-"


def host_offset(count: int, hostname: str | None = None) -> int:
    """This host's preferred position in a list of ``count`` entries."""
    name = (hostname or socket.gethostname()).encode()
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big") % max(count, 1)


def join_host_port(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class HostList:
    """The hosts of one ``HostListConfig``, in failover order. ``name`` labels its logs."""

    def __init__(self, config: HostListConfig, name: str, resolver: Resolver = resolve,
                 hostname: str | None = None) -> None:
        self.config = config
        self.name = name
        self._resolver = resolver
        self._hostname = hostname
        self._addrs: tuple[str, ...] = tuple(config.static()) or ((config.dns,) if config.dns else ())
        self._offset = host_offset(len(self._addrs), hostname)
        self._resolved_at: float | None = None
        self._lock = asyncio.Lock()
        # addr -> (monotonic time until which it is tried last, its current down period)
        self._down: dict[str, tuple[float, float]] = {}

    @property
    def addrs(self) -> tuple[str, ...]:
        """Every host, in this host's preference order (up or down)."""
        return self._addrs[self._offset:] + self._addrs[:self._offset]

    async def start(self) -> None:
        """Resolve ``dns`` now; ConnectionError when it does not resolve."""
        if self.config.dns and not await self._resolve():
            raise ConnectionError(f"{self.name} dns {self.config.dns!r} does not resolve")

    async def refresh(self) -> bool:
        """Look ``dns`` up again if its answer is older than ``dns_ttl``; whether the
        addresses changed."""
        if not self.config.dns or not self._stale():
            return False
        async with self._lock:
            return self._stale() and await self._resolve()

    def _stale(self) -> bool:
        return self._resolved_at is None or time.monotonic() - self._resolved_at >= self.config.dns_ttl

    async def _resolve(self) -> bool:
        """One lookup; False (the last answer kept) when it fails or nothing changed."""
        host, port = split_host_port(self.config.dns)
        ips = await self._resolver(host, RESOLVE_TIMEOUT)
        self._resolved_at = time.monotonic()
        if not ips:
            return False
        resolved = tuple(join_host_port(ip, port) for ip in sorted(ips, key=lambda ip: (ip.version, ip.packed)))
        if resolved == self._addrs:
            return False
        log.info("dns resolved", hosts=self.name, dns=self.config.dns, addrs=",".join(resolved))
        self._addrs = resolved
        self._offset = host_offset(len(resolved), self._hostname)
        self._down = {a: d for a, d in self._down.items() if a in resolved}
        return True

    def order(self) -> list[str]:
        """The hosts to try for one request: those believed up in preference order, then
        those that failed recently, the one whose down period ends first first."""
        now = time.monotonic()
        up = [a for a in self.addrs if not self.is_down(a, now)]
        down = sorted((a for a in self.addrs if a not in up), key=lambda a: self._down[a][0])
        return up + down

    def is_down(self, addr: str, now: float | None = None) -> bool:
        return self._down.get(addr, (0.0, 0.0))[0] > (time.monotonic() if now is None else now)

    def failed(self, addr: str) -> float | None:
        """``addr`` did not answer: its new down period, or None when it is down already (a
        request on its way when it failed does not stretch the period). The period is
        :data:`DOWN_MIN` exactly at the first failure of an outage."""
        now = time.monotonic()
        until, last = self._down.get(addr, (0.0, 0.0))
        if until > now:
            return None
        period = min(last * 2, DOWN_MAX) if last else DOWN_MIN
        self._down[addr] = (now + period, period)
        return period

    def answered(self, addr: str) -> bool:
        """``addr`` answered; whether it had failed before (its outage is over)."""
        return self._down.pop(addr, None) is not None
