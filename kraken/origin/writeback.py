"""Write-back: every pushed blob eventually reaches its namespace's storage backend.

A push is acknowledged once the blob is in the local cache and a write-back task is queued
durably, so pushes keep working while the backend is down; the task is retried with backoff
until the backend holds the blob, across restarts. Until then the blob is the only copy, so
cleanup must not evict it (:meth:`WriteBack.pending_digests`).

"The backend holds the blob" means a copy whose content was read back and hashed
(:meth:`Backend.holds`), never an object of the right size: one left by an earlier broken
write, or planted, is overwritten. A task ends only once the backend copy verifies after the
upload, so eviction never drops the last good copy. The cost is one read-back of the blob
from the backend per (blob, namespace) written back, and one more for a blob the backend
already had (same size) when the task ran.

A blob's first upload goes before its other background work: the origin's eager metainfo
generation (a SHA-1 pass over the whole blob) waits for it (:meth:`WriteBack.first_attempt`),
so on a small host the two do not share the CPU and the disk while the blob still has no
other copy. A tracker asking for the metainfo meanwhile does not wait: it is generated at once.
"""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress
from pathlib import Path

from kraken.backend import BackendError, BackendRouter, ReadOnlyBackend
from kraken.core.digest import Digest
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.config import WritebackConfig
from kraken.origin.foreground import ForegroundGate
from kraken.persisted import PersistedQueue, RetryWorker, Task
from kraken.store.cas import CAStore

log = get_logger("origin")

#: Blobs remembered as awaiting their first write-back attempt, at most (beyond it, other work
#: on a new blob simply does not wait for its write-back).
MAX_AWAITED = 10_000


def _key(namespace: str, digest: Digest) -> str:
    return json.dumps([namespace, str(digest)])


class WriteBack:
    def __init__(
        self, queue: PersistedQueue, store: CAStore, router: BackendRouter, config: WritebackConfig, metrics: Metrics,
        tmp_dir: Path, foreground: ForegroundGate,
    ) -> None:
        self._store = store
        self._foreground = foreground
        self._router = router
        self._tmp_dir = tmp_dir
        self._bad_copies = metrics.counter(
            "kraken_origin_backend_corrupt_copies_total",
            "Backend copies of a blob that failed verification (overwritten by write-back)",
        )
        pending = metrics.gauge("kraken_origin_writeback_pending", "Blobs queued for write-back to a backend")
        self._failures = metrics.counter("kraken_origin_writeback_failures_total", "Failed write-back attempts")
        self._done = metrics.counter("kraken_origin_writebacks_total", "Blobs written back to a backend")
        self._upload_seconds = metrics.histogram(
            "kraken_origin_writeback_upload_seconds",
            "Time one blob's upload to its backend took (a write-back attempt, before its read-back)",
        )
        self._awaiting_first_attempt: dict[Digest, asyncio.Event] = {}
        self.worker = RetryWorker(
            "writeback", queue, self._handle, config.retry_interval, config.max_retry_interval,
            config.concurrency, on_count=pending.set,
        )

    def check_writable(self, namespace: str) -> None:
        """Raise :class:`ReadOnlyBackend` when ``namespace`` routes to a read-only backend (a
        pull-through): a blob pushed there could never be written back, and would be lost
        when evicted, so the push is refused up front."""
        if self._read_only(namespace):
            raise ReadOnlyBackend(f"namespace {namespace!r} is served by a read-only backend (a pull-through): "
                                  "push to its upstream instead")

    def _read_only(self, namespace: str) -> bool:
        try:
            return self._router.for_namespace(namespace).read_only
        except BackendError:
            return False  # no backend: the task is queued and fails (retried) until one is configured

    async def enqueue(self, namespace: str, digest: Digest, delay: float = 0.0) -> None:
        """Queue the write-back, except to a read-only backend: the blob came from it (a pull
        through), or was restored from a ring owner after it served a bad copy, and a write
        there can never succeed."""
        if self._read_only(namespace):
            return
        if delay == 0 and len(self._awaiting_first_attempt) < MAX_AWAITED:
            self._awaiting_first_attempt.setdefault(digest, asyncio.Event())
        await self.worker.add(_key(namespace, digest), {"namespace": namespace, "digest": str(digest)}, delay)

    async def first_attempt(self, digest: Digest, timeout: float) -> None:
        """Until the first write-back attempt of ``digest`` queued without delay uploaded the
        blob, or ended without (found it stored, failed, dropped it), at most ``timeout``
        seconds; at once if none is awaited."""
        event = self._awaiting_first_attempt.get(digest)
        if event is not None:
            with suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)

    def _attempted(self, digest: Digest) -> None:
        event = self._awaiting_first_attempt.pop(digest, None)
        if event is not None:
            event.set()

    async def pending_digests(self) -> set[Digest]:
        return {Digest.parse(task.payload["digest"]) for task in await self.worker.queue.all()}

    async def _handle(self, task: Task) -> None:
        digest = Digest.parse(task.payload["digest"])
        try:
            await self._attempt(task, digest)
        finally:
            self._attempted(digest)

    async def _attempt(self, task: Task, digest: Digest) -> None:
        await self._foreground.lull()
        namespace = task.payload["namespace"]
        try:
            self.check_writable(namespace)
        except ReadOnlyBackend as e:
            # Queued before a config change made the namespace a pull-through: it can never
            # succeed, so it is dropped rather than retried for ever.
            log.warning("write-back dropped: the namespace's backend is read-only", namespace=namespace,
                        digest=digest, error=str(e))
            return
        try:
            await self._write_back(namespace, digest)
        except Exception as e:
            self._failures.inc()
            # Name the backend (kind and config entry) and the namespace: with several backends,
            # "which store refuses us" (down, wrong credentials) is the first question.
            try:
                backend = self._router.route(namespace).describe()
            except BackendError:
                backend = "none"
            log.warning("write-back failed, will retry", namespace=namespace, digest=digest, backend=backend,
                        attempt=task.attempts + 1, error=f"{type(e).__name__}: {e}")
            raise

    async def _write_back(self, namespace: str, digest: Digest) -> None:
        backend = self._router.for_namespace(namespace)
        size = self._store.size(digest)
        remote = await backend.stat(namespace, digest.hex)
        if (remote is not None and (size is None or remote.size == size)
                and await backend.holds(namespace, digest, self._tmp_dir)):
            log.info("write-back not needed, backend copy verified", namespace=namespace, digest=digest)
            return
        if remote is not None:
            self._bad_copies.inc()
            log.error("backend copy fails verification; overwriting it", namespace=namespace, digest=digest,
                      backend_size=remote.size, size=size)
        path = await self._store.verified_path(digest)
        if path is None:
            # The blob left the cache (evicted after a re-push raced with a sweep, or
            # quarantined as corrupt): there is nothing good left here to write.
            log.error("write-back dropped, blob no longer cached", namespace=namespace, digest=digest)
            return
        started = time.monotonic()
        await backend.upload(namespace, digest.hex, path)
        self._upload_seconds.observe(time.monotonic() - started)
        self._attempted(digest)  # uploaded: the read-back need not keep other work waiting
        if not await backend.holds(namespace, digest, self._tmp_dir):
            raise BackendError(f"{digest} does not verify in the backend after its upload")
        self._done.inc()
        log.info("blob written back and verified", namespace=namespace, digest=digest, size=size)
