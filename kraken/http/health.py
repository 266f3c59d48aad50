"""Asking another Kraken component whether it is up: its ``GET /health`` answers 200.

Readiness checks (the agent's, the proxy's, the tracker's) call components through this one
probe, with no retries (a readiness answer should be quick and say what it sees now) and a
bound on the whole call.
"""
from __future__ import annotations

import aiohttp

from kraken.http.client import HttpClient, HTTPStatusError

#: Seconds a probe may take, connection included.
PROBE_TIMEOUT = 2.0
#: What a failed probe raises: the component is down, unreachable, or answered non-200.
PROBE_ERRORS = (TimeoutError, aiohttp.ClientError, HTTPStatusError)


def probe_timeout(client: HttpClient, timeout: float) -> aiohttp.ClientTimeout:
    """``timeout`` on the whole probe, within the client's connect and read timeouts: a
    per-request ``ClientTimeout`` replaces the session's, so they are given again (else an
    unreachable host would hold a probe for all of ``timeout``, not ``connect_timeout``)."""
    return aiohttp.ClientTimeout(total=timeout, sock_connect=client.config.connect_timeout,
                                 sock_read=client.config.read_timeout)


async def check(client: HttpClient, addr: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise one of :data:`PROBE_ERRORS` unless the component at ``addr`` answers ``/health``."""
    resp = await client.request("GET", client.url(addr, "/health"), retry=False,
                                timeout=probe_timeout(client, timeout))
    resp.release()


async def check_any(client: HttpClient, addrs: list[str], what: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Return once one of ``addrs`` answers ``/health``; else raise ConnectionError naming
    every failure (a ring routes around the others)."""
    errors = []
    for addr in addrs:
        try:
            await check(client, addr, timeout)
            return
        except PROBE_ERRORS as e:
            errors.append(f"{addr}: {type(e).__name__}: {e}")
    raise ConnectionError(f"no {what} is healthy ({'; '.join(errors) or 'none configured'})")
