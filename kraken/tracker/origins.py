"""The P2P addresses of origins, as the tracker hands them to agents.

Compact peer lists carry IP addresses, so an origin's P2P address given as a host name is
resolved (asynchronously, with a timeout) and the answer cached for :data:`RESOLVE_TTL`; a
failed resolution is retried after :data:`FAILED_TTL`, and meanwhile that origin is simply
not offered (agents still have the other peers and origins).
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from kraken.log import get_logger
from kraken.tracker.config import split_host_port
from kraken.tracker.peerstore import PeerAddr

log = get_logger("tracker")

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
    """An IP literal as is; a name to its first IPv4 address (compact lists prefer it), else IPv6."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    except (TimeoutError, OSError) as e:
        log.warning("cannot resolve origin P2P address", host=host, error=f"{type(e).__name__}: {e}")
        return None
    ips = [str(info[4][0]) for info in infos]
    return next((ip for ip in ips if ":" not in ip), ips[0] if ips else None)
