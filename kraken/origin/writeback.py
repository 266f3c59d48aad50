"""Write-back: every pushed blob eventually reaches its namespace's storage backend.

A push is acknowledged once the blob is in the local cache and a write-back task is queued
durably, so pushes keep working while the backend is down; the task is retried with backoff
until the backend holds the blob, across restarts. Until then the blob is the only copy, so
cleanup must not evict it (:meth:`WriteBack.pending_digests`).
"""
from __future__ import annotations

import json

from kraken.backend import BackendRouter
from kraken.core.digest import Digest
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.config import WritebackConfig
from kraken.persisted import PersistedQueue, RetryWorker, Task
from kraken.store.cas import CAStore

log = get_logger("origin")


def _key(namespace: str, digest: Digest) -> str:
    return json.dumps([namespace, str(digest)])


class WriteBack:
    def __init__(
        self, queue: PersistedQueue, store: CAStore, router: BackendRouter, config: WritebackConfig, metrics: Metrics
    ) -> None:
        self._store = store
        self._router = router
        pending = metrics.gauge("kraken_origin_writeback_pending", "Blobs queued for write-back to a backend")
        self._failures = metrics.counter("kraken_origin_writeback_failures_total", "Failed write-back attempts")
        self._done = metrics.counter("kraken_origin_writebacks_total", "Blobs written back to a backend")
        self.worker = RetryWorker(
            "writeback", queue, self._handle, config.retry_interval, config.max_retry_interval,
            config.concurrency, on_count=pending.set,
        )

    async def enqueue(self, namespace: str, digest: Digest, delay: float = 0.0) -> None:
        await self.worker.add(_key(namespace, digest), {"namespace": namespace, "digest": str(digest)}, delay)

    async def pending_digests(self) -> set[Digest]:
        return {Digest.parse(task.payload["digest"]) for task in await self.worker.queue.all()}

    async def _handle(self, task: Task) -> None:
        try:
            await self._write_back(task.payload["namespace"], Digest.parse(task.payload["digest"]))
        except Exception:
            self._failures.inc()
            raise

    async def _write_back(self, namespace: str, digest: Digest) -> None:
        backend = self._router.for_namespace(namespace)
        size = self._store.size(digest)
        remote = await backend.stat(namespace, digest.hex)
        if remote is not None and (size is None or remote.size == size):
            log.info("write-back not needed, backend has the blob", namespace=namespace, digest=digest)
            return
        if size is None:
            # Only reachable when a re-push of a cached blob (which queues a write-back for its
            # namespace) raced with that blob's eviction: there is nothing left to write.
            log.error("write-back dropped, blob no longer cached", namespace=namespace, digest=digest)
            return
        await backend.upload(namespace, digest.hex, self._store.path(digest))
        self._done.inc()
        log.info("blob written back", namespace=namespace, digest=digest, size=size)
