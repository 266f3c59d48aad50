"""Eviction from the agent's cache: by idle time (TTI) and above a disk-usage threshold.

Only the agent's own cache files count (``CAStore`` under ``store.root``), never the rest of
the disk: the agent must not evict its blobs because something else filled the filesystem.
A read touches the blob (``CAStore.touch``), so its mtime is its last use. An evicted blob
stops being seeded first (the origins keep seeding it), then leaves the disk.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from kraken.agent.blobs import AgentBlobs
from kraken.agent.config import CleanupConfig
from kraken.core.digest import Digest
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.store.cas import CAStore

log = get_logger("agent")


@dataclass(frozen=True)
class CacheEntry:
    digest: Digest
    last_used: float
    size: int


def scan(cas: CAStore) -> list[CacheEntry]:
    """Every cached blob with its last use and size (blocking: run in a worker thread)."""
    entries = []
    for digest in cas.digests():
        try:
            st = cas.path(digest).stat()
        except FileNotFoundError:
            continue
        entries.append(CacheEntry(digest, st.st_mtime, st.st_size))
    return entries


def choose_victims(entries: list[CacheEntry], now: float, tti: float, threshold: int) -> list[CacheEntry]:
    """Blobs idle for ``tti`` (0: none), then the least recently used while the total is
    above ``threshold`` (0: no limit)."""
    idle = [e for e in entries if tti and now - e.last_used > tti]
    kept = sorted((e for e in entries if not (tti and now - e.last_used > tti)), key=lambda e: e.last_used)
    victims = list(idle)
    total = sum(e.size for e in kept)
    while threshold and kept and total > threshold:
        oldest = kept.pop(0)
        victims.append(oldest)
        total -= oldest.size
    return victims


class CacheCleanup:
    def __init__(self, blobs: AgentBlobs, config: CleanupConfig, metrics: Metrics) -> None:
        self.blobs = blobs
        self.config = config
        self._evictions = metrics.counter("kraken_agent_evictions_total", "Blobs evicted from the agent's cache")
        self._cache_bytes = metrics.gauge("kraken_agent_cache_bytes", "Bytes of blobs in the agent's cache")

    async def run(self) -> None:
        """Sweep every ``interval`` until cancelled; a failed sweep is logged and retried."""
        while True:
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - the next sweep tries again
                log.exception("cache cleanup failed")
            await asyncio.sleep(self.config.interval)

    async def sweep(self) -> list[Digest]:
        entries = await asyncio.to_thread(scan, self.blobs.cas)
        victims = choose_victims(entries, time.time(), self.config.tti, self.config.disk_usage_threshold)
        for entry in victims:
            await self.blobs.delete(entry.digest)
            self._evictions.inc()
            log.info("blob evicted", digest=entry.digest, size=entry.size, idle=round(time.time() - entry.last_used))
        self._cache_bytes.set(sum(e.size for e in entries) - sum(e.size for e in victims))
        return [e.digest for e in victims]
