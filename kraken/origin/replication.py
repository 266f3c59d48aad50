"""Copying a pushed blob to the other origins that own it on the hash ring.

With ``ring.max_replica > 1`` a blob has several owners but a client pushes it to one; that
origin queues one durable task per other owner and uploads the blob to each, marked as a
replica so the receiver neither replicates it again nor rushes its own write-back.

The first ``replication.sync_copies`` copies are made while the push waits (its commit is
acknowledged after them, or after ``sync_timeout`` each): their queued tasks are deferred by
that long, so a copy is never sent twice at once, and removed once the copy is made. A copy
that failed or timed out is left to its task, and for :data:`SKIP_AFTER_FAILURE`
seconds pushes do not wait for that owner.
"""
from __future__ import annotations

import asyncio
import json
import time

from kraken.core.digest import Digest
from kraken.http.client import HttpClient
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import OriginClient
from kraken.origin.config import ReplicationConfig
from kraken.origin.foreground import ForegroundGate
from kraken.persisted import PersistedQueue, RetryWorker, Task
from kraken.ring import HashRing
from kraken.store.cas import CAStore

log = get_logger("origin")

#: Seconds after a failed copy during a push for which pushes do not wait for that owner.
SKIP_AFTER_FAILURE = 10.0


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
        foreground: ForegroundGate,
    ) -> None:
        self._store = store
        self._config = config
        self._foreground = foreground
        # host -> when a copy made while a push waited last failed (one entry per ring host).
        self._sync_failed: dict[str, float] = {}
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
        """Queue a copy to every owner of ``digest`` other than this origin, and make the first
        ``sync_copies`` of them now."""
        others = [host for host in self._ring.owners(digest) if host != self._identity]
        now = others[:self._config.sync_copies]
        for host in others:
            payload = {"host": host, "namespace": namespace, "digest": str(digest)}
            delay = self._config.sync_timeout if host in now else 0.0
            await self.worker.add(json.dumps([host, namespace, str(digest)]), payload, delay)
        for host in now:
            await self._copy_now(host, namespace, digest)

    async def _copy_now(self, host: str, namespace: str, digest: Digest) -> None:
        """One copy while the push waits, unless ``host`` failed one lately (a dead owner
        must not cost every push its timeouts: its queued tasks catch up when it is back)."""
        failed_at = self._sync_failed.get(host)
        if failed_at is not None and time.monotonic() - failed_at < SKIP_AFTER_FAILURE:
            return
        path = self._store.path(digest)
        try:
            async with asyncio.timeout(self._config.sync_timeout):
                await OriginClient(host, self._http).upload_file(namespace, digest, path, replica=True)
        except Exception as e:  # noqa: BLE001 - the queued task makes the copy later
            self._failures.inc()
            self._sync_failed[host] = time.monotonic()
            log.warning("blob not replicated before the push's answer; queued", host=host, namespace=namespace,
                        digest=digest, error=f"{type(e).__name__}: {e}")
            return
        self._sync_failed.pop(host, None)
        await self.worker.complete(json.dumps([host, namespace, str(digest)]))
        log.info("blob replicated before the push's answer", host=host, namespace=namespace, digest=digest)

    async def pending_digests(self) -> set[Digest]:
        return {Digest.parse(task.payload["digest"]) for task in await self.worker.queue.all()}

    async def _handle(self, task: Task) -> None:
        # Queued copies (a repair of an owner that was down, say) yield to client transfers
        # as the write-back does; the copies a push waits for do not.
        await self._foreground.lull()
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
