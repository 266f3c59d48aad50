"""A swarm of agents seen from outside: their P2P byte counters and pulls from the agent server."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from kraken.core.digest import Digest
from kraken.devcluster import Process
from tests.support.metrics import metric
from tests.support.waiting import until

REPO = "test/swarm"
#: The agents' and origin's ``p2p.stats_interval`` in the swarm tests: counters refresh this often.
STATS_INTERVAL = 0.2

T = TypeVar("T")


@dataclass(frozen=True)
class Counters:
    """One process's P2P byte counters."""

    from_origin: float = 0.0
    from_peers: float = 0.0
    uploaded: float = 0.0

    @property
    def downloaded(self) -> float:
        return self.from_origin + self.from_peers

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.from_origin - other.from_origin, self.from_peers - other.from_peers,
                        self.uploaded - other.uploaded)


def metrics_url(proc: Process) -> str:
    return f"http://127.0.0.1:{proc.health_port or proc.port}/metrics"


async def counters(http: aiohttp.ClientSession, proc: Process) -> Counters:
    async with http.get(metrics_url(proc)) as r:
        assert r.status == 200, await r.text()
        text = await r.text()
    return Counters(
        metric(text, "kraken_p2p_download_bytes_total", 0.0, source="origin"),
        metric(text, "kraken_p2p_download_bytes_total", 0.0, source="peer"),
        metric(text, "kraken_p2p_upload_bytes_total", 0.0),
    )


async def settled(read: Callable[[], Awaitable[T]], quiet: float = 5 * STATS_INTERVAL,
                  timeout: float = 20.0, what: str = "counters") -> T:
    """``read()`` once it has returned the same value for ``quiet`` seconds (the counters are
    refreshed every stats interval, and seeds keep uploading a little after a download ends)."""
    last: list = [object(), time.monotonic()]

    async def steady() -> bool:
        value = await read()
        now = time.monotonic()
        if value != last[0]:
            last[:] = [value, now]
            return False
        return now - last[1] >= quiet

    await until(steady, timeout=timeout, what=f"{what} to settle")
    return last[0]


async def pull(http: aiohttp.ClientSession, agent: Process, digest: Digest) -> tuple[Digest, int]:
    """GET the blob from the agent server (a P2P download unless cached): the sha256 and size of
    what it returned, hashed as it streams in."""
    hasher = hashlib.sha256()
    size = 0
    async with http.get(f"http://127.0.0.1:{agent.health_port}/namespace/{REPO}/blobs/{digest}") as r:
        assert r.status == 200, f"{agent.name}: {r.status} {await r.text()}"
        async for chunk in r.content.iter_chunked(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    return Digest.parse(f"sha256:{hasher.hexdigest()}"), size
