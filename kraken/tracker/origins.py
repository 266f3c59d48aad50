"""The P2P addresses of origins, as the tracker hands them to agents.

Compact peer lists carry IP addresses, so an origin's P2P address given as a host name is
resolved (asynchronously, with a timeout) and the answer cached for :data:`RESOLVE_TTL`; a
failed resolution is retried after :data:`FAILED_TTL`, and meanwhile that origin is simply
not offered (agents still have the other peers and origins).
"""
from __future__ import annotations

import time

from kraken.http.addresses import resolve, split_host_port
from kraken.tracker.peerstore import PeerAddr

RESOLVE_TTL = 60.0
FAILED_TTL = 5.0
RESOLVE_TIMEOUT = 2.0


class OriginPeers:
    """Maps origins' HTTP addresses (ring hosts) to the peer addresses they seed on."""

    def __init__(self, p2p: dict[str, str]) -> None:
        self._p2p = {http: split_host_port(addr) for http, addr in p2p.items()}
        self._resolved: dict[str, tuple[float, PeerAddr | None]] = {}

    async def peers(self, http_hosts: list[str]) -> list[PeerAddr]:
        """The P2P addresses of ``http_hosts`` that are known and resolve, in order."""
        found = [await self._peer(host) for host in http_hosts if host in self._p2p]
        return [addr for addr in found if addr is not None]

    async def _peer(self, http_host: str) -> PeerAddr | None:
        cached = self._resolved.get(http_host)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        host, port = self._p2p[http_host]
        ip = await _resolve(host)
        addr = PeerAddr(ip, port) if ip is not None else None
        self._resolved[http_host] = (time.monotonic() + (RESOLVE_TTL if addr else FAILED_TTL), addr)
        return addr


async def _resolve(host: str) -> str | None:
    """The host's first IPv4 address (compact lists prefer it), else its first IPv6 one."""
    ips = await resolve(host, RESOLVE_TIMEOUT)
    if not ips:
        return None
    return str(next((ip for ip in ips if ip.version == 4), ips[0]))
