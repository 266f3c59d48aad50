"""Eviction from the agent's cache: by idle time (TTI) and above a disk-usage threshold.

The scan and the sweep are the store's (:mod:`kraken.store.eviction`); the agent brings its
rule and its delete. Only the agent's own cache files count (``CAStore`` under
``store.root``), never the rest of the disk: the agent must not evict its blobs because
something else filled the filesystem. A read touches the blob (``CAStore.touch``), so its
mtime is its last use. An evicted blob stops being seeded first (the origins keep seeding
it), then leaves the disk.
"""
from __future__ import annotations

import asyncio
import time

from kraken.agent.blobs import AgentBlobs
from kraken.agent.config import CleanupConfig
from kraken.core.digest import Digest
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.store import eviction

log = get_logger("agent")


def victim_rule(now: float, tti: float, threshold: int) -> eviction.Rule:
    """Blobs idle for ``tti`` (0: none), then the least recently used while the cache holds
    more than ``threshold`` bytes (0: no limit). The agent protects nothing: the origins
    keep every blob."""
    return eviction.idle_or_over(now - tti if tti else None, threshold)


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
        cas = self.blobs.cas
        entries = await asyncio.to_thread(eviction.scan, cas)
        rule = victim_rule(time.time(), self.config.tti, self.config.disk_usage_threshold)
        sweep = await eviction.evict(cas, entries, rule, self.blobs.delete)
        for entry in sweep.evicted:
            self._evictions.inc()
            log.info("blob evicted", digest=entry.digest, size=entry.size, idle=round(time.time() - entry.last_access))
        self._cache_bytes.set(sweep.usage)
        return [e.digest for e in sweep.evicted]
