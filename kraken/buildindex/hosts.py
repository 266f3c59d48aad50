"""Where a client finds build-index: one address, a list, or a DNS name (the ``build_index:``
section of the proxy's and the agents' configs).

Several build-index nodes share one tag backend, so any of them answers any request; a client
holds them all and moves to the next when one does not answer
(:class:`kraken.buildindex.client.BuildIndexClient`). A DNS name is resolved again every
``dns_ttl`` (as Kraken's host lists do), so nodes can be added and removed without touching
the clients' configs; while a lookup fails, the addresses last resolved stay in use.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field

from kraken.config import ConfigError, Duration
from kraken.http.addresses import resolve, split_host_port
from kraken.log import get_logger

log = get_logger("kraken.buildindex.hosts")

DEFAULT_ADDR = "localhost:15004"
#: Seconds a DNS lookup of ``dns`` may take before the last resolved addresses are used.
RESOLVE_TIMEOUT = 2.0


@dataclass
class BuildIndexHostsConfig:
    """``addr``: one build-index ``host:port``. ``addrs``: several (then ``addr`` is unused),
    tried in turn. ``dns``: a ``name:port`` whose every address is a build-index, resolved
    again every ``dns_ttl`` (exclusive with ``addrs``)."""

    addr: str = DEFAULT_ADDR
    addrs: list[str] = field(default_factory=list)
    dns: str = ""
    dns_ttl: Duration = 5.0

    def __post_init__(self) -> None:
        if self.addrs and self.dns:
            raise ConfigError("build_index: give addrs or dns, not both")
        if self.dns_ttl <= 0:
            raise ConfigError(f"build_index.dns_ttl must be > 0, got {self.dns_ttl}")
        for addr in [self.addr, *self.addrs, *([self.dns] if self.dns else [])]:
            try:
                split_host_port(addr)
            except ValueError as e:
                raise ConfigError(f"build_index: {e}") from None

    def static(self) -> list[str]:
        """The configured addresses (``addrs``, else ``addr``), without duplicates."""
        return list(dict.fromkeys(self.addrs)) or [self.addr]

    def describe(self) -> str:
        """For logs: the DNS name, else the addresses."""
        return f"dns:{self.dns}" if self.dns else ",".join(self.static())


def join_host_port(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class BuildIndexHosts:
    """The build-index addresses a client may call now."""

    def __init__(self, config: BuildIndexHostsConfig) -> None:
        self.config = config
        # Until a DNS name first resolves, the name itself: requests fail with an error naming it.
        self._addrs = [config.dns] if config.dns else config.static()
        self._resolved_at: float | None = None
        self._ever_resolved = False
        self._lock = asyncio.Lock()

    async def current(self) -> list[str]:
        """The addresses, in a stable order; with ``dns``, resolved again once ``dns_ttl`` has
        passed (one lookup at a time; a failed one keeps the previous answer)."""
        if not self.config.dns:
            return self._addrs
        if self._resolved_at is not None and time.monotonic() - self._resolved_at < self.config.dns_ttl:
            return self._addrs
        async with self._lock:
            if self._resolved_at is None or time.monotonic() - self._resolved_at >= self.config.dns_ttl:
                await self._resolve()
        return self._addrs

    async def _resolve(self) -> None:
        host, port = split_host_port(self.config.dns)
        ips = await resolve(host, RESOLVE_TIMEOUT)
        self._resolved_at = time.monotonic()
        if not ips:
            if self._ever_resolved:
                log.warning("build-index DNS name resolves to nothing now; keeping the last addresses",
                            dns=self.config.dns, addrs=",".join(self._addrs))
            return
        self._ever_resolved = True
        addrs = sorted(join_host_port(ip, port) for ip in ips)
        if addrs != self._addrs:
            log.info("build-index addresses resolved", dns=self.config.dns, addrs=",".join(addrs))
        self._addrs = addrs
