"""The origin's eviction: by idle time and disk usage, never of a blob that is the only copy.

The scan and the sweep are the store's (:mod:`kraken.store.eviction`); what is the origin's
is the rule (a blob being committed, seeded, or with a write-back or replication pending is
protected) and the order that makes the protection hold. A sweep runs in three steps so
that a blob committed during the sweep cannot be evicted before its write-back is queued:
(1) list the cache, (2) ask which digests are protected (the service reads the committing
set before the queues), (3) delete unprotected candidates from step 1. A blob committed
after step 1 is not a candidate; one committed before it is either still marked as being
committed or already has its task queued when step 2 looks.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from kraken.core.digest import Digest
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.config import CleanupConfig
from kraken.store import eviction
from kraken.store.cas import CAStore

log = get_logger("origin")


class OriginCleanup:
    """Evicts on demand (:meth:`evict`, also ``POST /forcecleanup``) and every
    ``cleanup.interval`` (:meth:`run`), which also removes stale uploads."""

    def __init__(
        self, store: CAStore, protected: Callable[[], Awaitable[set[Digest]]], config: CleanupConfig, metrics: Metrics
    ) -> None:
        self._store = store
        self._protected = protected
        self._config = config
        self._evictions = metrics.counter("kraken_origin_evictions_total", "Blobs evicted from the cache")

    async def evict(self, idle_for: float, max_usage: int = 0) -> list[Digest]:
        """Evict blobs idle for ``idle_for`` seconds (and LRU ones above ``max_usage`` bytes)."""
        idle_before = time.time() - idle_for
        entries = await asyncio.to_thread(eviction.scan, self._store)
        protected = await self._protected()
        sweep = await eviction.evict(self._store, entries, eviction.idle_or_over(idle_before, max_usage, protected))
        if sweep.evicted:
            self._evictions.inc(len(sweep.evicted))
            log.info("blobs evicted", count=len(sweep.evicted), kept_pending=len(protected))
        return [e.digest for e in sweep.evicted]

    async def run(self) -> None:
        """Sweep every ``interval`` until cancelled; a failed sweep is logged and retried."""
        settings = self._config
        while True:
            await asyncio.sleep(settings.interval)
            try:
                removed = await asyncio.to_thread(self._store.cleanup_uploads, settings.upload_ttl)
                if removed:
                    log.info("stale uploads removed", count=removed)
                await self.evict(settings.tti, settings.disk_usage_threshold)
            except Exception:  # noqa: BLE001 - a failed sweep must not end cleanup for good
                log.exception("cleanup sweep failed")
