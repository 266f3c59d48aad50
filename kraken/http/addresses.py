"""Host addresses of Kraken's peers: ``host:port`` parsing and name resolution, written once.

The tracker resolves origins' P2P addresses (compact peer lists carry IPs) and the origin
resolves its ring's hosts (who may call its peer-only endpoints); both resolve off the event
loop's blocking path (``loop.getaddrinfo``), with a timeout, and treat a failed lookup as
"not known now" rather than an error.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket

from kraken.log import get_logger

log = get_logger("kraken.http.addresses")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def split_host_port(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6 literals) -> (host, port); ValueError if malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{addr!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


async def resolve(host: str, timeout: float) -> list[IPAddress] | None:
    """``host``'s addresses in the resolver's order (an IP literal is itself); None, logged,
    when the lookup fails or takes longer than ``timeout`` seconds."""
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host)]
    try:
        async with asyncio.timeout(timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as e:
        log.warning("cannot resolve host", host=host, error=f"{type(e).__name__}: {e}")
        return None
    found: list[IPAddress] = []
    for info in infos:
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in found:
                found.append(ip)
    return found
