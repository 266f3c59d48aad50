"""Which callers are a component's cluster peers, for the endpoints only they may call (the
origin's ring hosts; build-index's neighbours in ``cluster``).

``POST /forcecleanup`` evicts the cache and an upload with ``?replica=true`` skips the
write-back for minutes: a stranger on the network must not do either. Without TLS the only
proof of who calls is the connection's source address, so these answer only to:

- the addresses the ring's hosts (``ring.hosts``) resolve to: the origins that replicate to
  each other;
- loopback: an operator on the origin's own host (who could delete the store's files anyway),
  and every origin of a single-host cluster.

Names are resolved when first needed and again after :data:`REFRESH` seconds, or sooner (at
most every :data:`RETRY` seconds) when an unknown address calls: an origin whose address just
changed is recognised without a restart.
"""
from __future__ import annotations

import asyncio
import time

from kraken.http.addresses import IPAddress, resolve, split_host_port

REFRESH = 60.0
RETRY = 5.0
RESOLVE_TIMEOUT = 5.0


def _hostname(addr: str) -> str:
    """``host`` of ``host:port`` / ``[v6]:port``; a bare host as is."""
    try:
        return split_host_port(addr)[0]
    except ValueError:
        return addr


class ClusterPeers:
    """The ring's hosts' addresses, resolved and refreshed (see the module docstring)."""

    def __init__(self, hosts: list[str]) -> None:
        self.hosts = sorted({_hostname(h) for h in hosts})
        self._by_host: dict[str, frozenset[IPAddress]] = {}
        self._addresses: frozenset[IPAddress] = frozenset()
        self._resolved_at: float | None = None
        self._lock = asyncio.Lock()

    async def allows(self, address: IPAddress | None) -> bool:
        if address is None:
            return False
        if address.is_loopback:
            return True
        now = time.monotonic()
        stale = self._resolved_at is None or now - self._resolved_at >= REFRESH
        if stale or (address not in self._addresses and now - (self._resolved_at or 0.0) >= RETRY):
            await self._resolve()
        return address in self._addresses

    async def _resolve(self) -> None:
        async with self._lock:
            for host in self.hosts:
                addresses = await resolve(host, RESOLVE_TIMEOUT)
                if addresses is not None:  # a failed lookup keeps what the last one found
                    self._by_host[host] = frozenset(addresses)
            self._addresses = frozenset().union(*self._by_host.values())
            self._resolved_at = time.monotonic()
