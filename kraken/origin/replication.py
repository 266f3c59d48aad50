"""Copying a pushed blob to the other origins that own it on the hash ring.

With ``ring.max_replica > 1`` a blob has several owners but a client pushes it to one; that
origin queues one durable task per other owner and uploads the blob to each, marked as a
replica so the receiver neither replicates it again nor rushes its own write-back.
"""
from __future__ import annotations

import json

from kraken.core.digest import Digest
from kraken.http.client import HttpClient
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import OriginClient
from kraken.origin.config import ReplicationConfig
from kraken.persisted import PersistedQueue, RetryWorker, Task
from kraken.ring import HashRing
from kraken.store.cas import CAStore

log = get_logger("origin")


class Replicator:
    def __init__(
        self,
        queue: PersistedQueue,
        store: CAStore,
        ring: HashRing,
        identity: str,
        http: HttpClient,
        config: ReplicationConfig,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._ring = ring
        self._identity = identity
        self._http = http
        pending = metrics.gauge("kraken_origin_replication_pending", "Blob copies queued for other ring owners")
        self._failures = metrics.counter("kraken_origin_replication_failures_total", "Failed replication attempts")
        self.worker = RetryWorker(
            "replication", queue, self._handle, config.retry_interval, config.max_retry_interval,
            config.concurrency, on_count=pending.set,
        )

    async def enqueue(self, namespace: str, digest: Digest) -> None:
        """Queue a copy to every owner of ``digest`` other than this origin."""
        for host in self._ring.owners(digest):
            if host != self._identity:
                payload = {"host": host, "namespace": namespace, "digest": str(digest)}
                await self.worker.add(json.dumps([host, namespace, str(digest)]), payload)

    async def pending_digests(self) -> set[Digest]:
        return {Digest.parse(task.payload["digest"]) for task in await self.worker.queue.all()}

    async def _handle(self, task: Task) -> None:
        host, namespace = task.payload["host"], task.payload["namespace"]
        digest = Digest.parse(task.payload["digest"])
        path = await self._store.verified_path(digest)
        if path is None:
            log.error("replication dropped, blob no longer cached", host=host, namespace=namespace, digest=digest)
            return
        try:
            await OriginClient(host, self._http).upload_file(namespace, digest, path, replica=True)
        except Exception:
            self._failures.inc()
            raise
        log.info("blob replicated", host=host, namespace=namespace, digest=digest)
