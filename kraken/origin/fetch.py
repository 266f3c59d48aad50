"""Lazy fetches of blobs the cache lacks from the namespace's storage backend.

A request for a missing blob asks the backend whether it has it: if not, the answer is 404;
if so, a fetch starts in the background and the request is answered 202 (the client polls).
Concurrent requests for the same digest share that one fetch (a single flight of the
origin's task owner). The download goes to a temporary file beside the cache and enters the
cache only after its sha256 matches: hashed as it is written where the backend writes the
object in order (gcs; see Backend.download_hashed), else read once more when complete.

A backend copy that fails that check is logged, and the blob is asked of the other ring
owners, from their caches only (verified there, and again here): when one has a good copy,
the blob is cached from it and ``on_repaired`` queues a write-back, which overwrites the
backend's bad copy (see kraken.origin.writeback). Such a fetch counts as
``result="repaired"``, one that found no good copy as ``"corrupt"``. The other owners are
also asked, once, for a blob this origin quarantined while the backend lacks it, and for any
blob the backend lacks that one of them holds in its cache: a blob just pushed to another owner,
whose replication here and write-back have not happened yet, would otherwise be "unknown" here
(``result="replica"``, or ``"not_found"``).

A fetch that failed is remembered for :data:`FAILURE_MEMORY`: requests meanwhile get its
error (HTTP 503 naming the backend and the reason) instead of a 202 and a new attempt, so a
client polling a blob the backend cannot deliver (a pull-through upstream that refuses the
credentials or serves corrupt bytes) fails in seconds rather than at its own deadline, and the
backend is not asked again on every poll.
"""
from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from kraken.backend import BackendError, BackendNotFound, BackendRouter
from kraken.core.digest import Digest
from kraken.http.client import HttpClient, HTTPStatusError
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import BlobNotFound, OriginClient
from kraken.store.cas import CAStore, DigestMismatch
from kraken.tasks import SingleFlight, TaskOwner

log = get_logger("origin")

#: Seconds a failed fetch is answered with its error before the backend is tried again.
FAILURE_MEMORY = 10.0
#: Seconds another ring owner may take to say whether its cache holds a blob.
PEER_CHECK_TIMEOUT = 2.0
#: Failed fetches remembered at most (the oldest are forgotten first).
MAX_FAILURES = 4096


class BackendFetcher:
    def __init__(
        self,
        store: CAStore,
        router: BackendRouter,
        owner: TaskOwner,
        metrics: Metrics,
        concurrency: int,
        on_fetched: Callable[[Digest], None],
        peers: Callable[[Digest], list[str]],
        http: HttpClient,
        on_repaired: Callable[[str, Digest], Awaitable[None]],
    ) -> None:
        self._store = store
        self._router = router
        self._on_fetched = on_fetched
        self._peers = peers
        self._http = http
        self._on_repaired = on_repaired
        self._limit = asyncio.Semaphore(concurrency)
        self._fetching: SingleFlight[Digest, None] = SingleFlight(owner, "fetch")
        # (namespace, digest) -> (monotonic time, why): a failure in one namespace's backend
        # says nothing about another's.
        self._failed: dict[tuple[str, Digest], tuple[float, str]] = {}
        self._tmp_dir = store.root / "fetch"
        self._fetches = metrics.counter(
            "kraken_origin_backend_fetches_total", "Blob fetches from a storage backend", ["result"]
        )

    async def start(self) -> None:
        """Forget downloads a previous process left half-done."""
        await asyncio.to_thread(shutil.rmtree, self._tmp_dir, True)
        await asyncio.to_thread(self._tmp_dir.mkdir, parents=True, exist_ok=True)

    async def request(self, namespace: str, digest: Digest) -> bool:
        """Make sure a fetch of ``digest`` is under way; False if nothing has the blob.

        A blob the backend lacks is asked of the other ring owners once after this origin
        quarantined its copy (it was pushed here, its write-back not done yet). Raises
        :class:`BackendError` when the backend cannot be asked.
        """
        if digest in self._fetching:
            return True
        self._raise_recent_failure(namespace, digest)
        try:
            backend = self._router.for_namespace(namespace)
        except BackendError:
            backend = None  # no backend serves this namespace: only another origin may have it
        if backend is not None and await backend.stat(namespace, digest.hex) is not None:
            fetch = self._fetch
        elif self._peers(digest) and (self._store.take_quarantined(digest) or await self._peer_has(namespace, digest)):
            fetch = self._fetch_from_peers
        else:
            return False
        if not self._store.exists(digest):
            self._fetching.start(digest, lambda: fetch(namespace, digest))
        return True

    async def _peer_has(self, namespace: str, digest: Digest) -> bool:
        """Whether another ring owner's cache has the blob: one just pushed there, not yet
        replicated here nor written back (a manifest's references are checked on any owner)."""
        for host in self._peers(digest):
            try:
                if await OriginClient(host, self._http).has_local(namespace, digest, PEER_CHECK_TIMEOUT):
                    return True
            except (TimeoutError, HTTPStatusError, aiohttp.ClientError) as e:
                log.info("ring owner not asked", host=host, digest=digest, error=f"{type(e).__name__}: {e}")
        return False

    def _raise_recent_failure(self, namespace: str, digest: Digest) -> None:
        failed = self._failed.get((namespace, digest))
        if failed is None:
            return
        at, reason = failed
        if time.monotonic() - at < FAILURE_MEMORY:
            raise BackendError(reason)
        del self._failed[(namespace, digest)]

    def _remember_failure(self, namespace: str, digest: Digest, reason: str) -> None:
        self._failed.pop((namespace, digest), None)
        self._failed[(namespace, digest)] = (time.monotonic(), reason)
        while len(self._failed) > MAX_FAILURES:
            del self._failed[next(iter(self._failed))]

    async def _fetch_from_peers(self, namespace: str, digest: Digest) -> None:
        tmp = self._tmp_dir / f"{digest.hex}.{uuid.uuid4().hex}"
        try:
            async with self._limit:
                found = await self._from_peers(namespace, digest, tmp)
            self._fetches.labels("replica" if found else "not_found").inc()
            if found:
                self._on_fetched(digest)
        finally:
            await asyncio.to_thread(_unlink, tmp)

    async def _fetch(self, namespace: str, digest: Digest) -> None:
        tmp = self._tmp_dir / f"{digest.hex}.{uuid.uuid4().hex}"
        result = "error"
        try:
            async with self._limit:
                backend = self._router.for_namespace(namespace)
                hashed = await backend.download_hashed(namespace, digest.hex, tmp, digest.algorithm)
                try:
                    await self._store.import_file(tmp, digest, hashed)
                except DigestMismatch as e:
                    log.error("backend blob failed verification; asking the other ring owners",
                              namespace=namespace, digest=digest, error=str(e))
                    result = "repaired" if await self._from_peers(namespace, digest, tmp) else "corrupt"
                    if result == "corrupt":
                        self._remember_failure(namespace, digest, f"the backend's copy of {digest} fails verification")
                        return
                else:
                    result = "ok"
            self._on_fetched(digest)
            log.info("blob fetched", namespace=namespace, digest=digest, source=result)
        except BackendNotFound:
            result = "not_found"
            log.warning("blob vanished from backend during fetch", namespace=namespace, digest=digest)
        except Exception as e:  # noqa: BLE001 - the next request retries; say why this one failed
            log.error("backend fetch failed", namespace=namespace, digest=digest,
                      backend=self._router.route(namespace).describe(), error=f"{type(e).__name__}: {e}")
            self._remember_failure(namespace, digest, f"fetch of {digest} failed: {e}")
        finally:
            self._fetches.labels(result).inc()
            await asyncio.to_thread(_unlink, tmp)

    async def _from_peers(self, namespace: str, digest: Digest, tmp: Path) -> bool:
        """Cache ``digest`` from the first other ring owner with a good copy and queue its
        write-back (which replaces a bad backend copy); False if none has one."""
        for host in self._peers(digest):
            try:
                await OriginClient(host, self._http).download_local(namespace, digest, tmp)
                await self._store.import_file(tmp, digest)
            except BlobNotFound:
                continue
            except (TimeoutError, DigestMismatch, HTTPStatusError, OSError, aiohttp.ClientError) as e:
                log.warning("ring owner has no good copy", host=host, digest=digest, error=f"{type(e).__name__}: {e}")
                continue
            log.warning("blob restored from a ring owner; writing it back",
                        host=host, namespace=namespace, digest=digest)
            await self._on_repaired(namespace, digest)
            return True
        log.error("no ring owner has a good copy of the blob", namespace=namespace, digest=digest)
        return False


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
