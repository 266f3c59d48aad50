"""Preheat jobs: make the origins cache every blob of an image before any agent asks for it.

A job names a repository and a manifest digest (from a registry's push notification, or a tag
resolved through build-index for Harbor's prefetch call). It reads the manifest from the
origins (waiting ``manifest_wait`` for one not readable yet: a registry may notify before its
storage shows the manifest), reads an index's child manifests the same way, and asks every
ring owner of every blob, the manifests included, to prefetch it
(``POST /namespace/<ns>/blobs/<d>/prefetch`` on the origin: 202 while it fetches from the
backend, 200 once cached). A blob counts as done when every owner answered 200; an owner that
cannot be reached is passed over while another has the blob (the ring's health checks own
that host's fate), and a 404, an error or no 200 within ``blob_timeout`` fails the blob, and
the job.

Beyond Kraken, which fires and forgets, each job keeps a state (queued, running, done,
failed) and its progress (blobs and bytes done of the total), so an operator sees when an
image is hot. Everything is bounded: ``max_jobs`` jobs are remembered (the oldest finished
ones are forgotten first; with that many still unfinished a new one is refused),
``max_running_jobs`` run at once and ``concurrency`` blob prefetches are in flight over all
jobs. A second request for an image whose job has not finished gets that job.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any
from urllib.parse import quote

import aiohttp

from kraken.core.digest import Digest
from kraken.http.client import HttpClient
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import BlobNotFound, OriginCluster
from kraken.proxy.config import PreheatServerConfig
from kraken.registry.manifest import ManifestError, parse_manifest
from kraken.tasks import TaskOwner

log = get_logger("proxy")

#: Errors a job keeps (the first ones; the count of blobs failed says how many there were).
MAX_ERRORS = 20
#: Index nesting followed (an index naming indexes naming manifests is already unusual).
MAX_DEPTH = 3
#: Blobs and manifests one job may reach in all (nested indexes multiply the per-manifest cap).
MAX_BLOBS = 10_000
#: Pauses between a blob's prefetch polls grow from the first to the last.
POLL_FIRST, POLL_MAX = 0.05, 2.0
MANIFEST_CHUNK = 64 << 10
#: How an origin that cannot be reached fails (aiohttp's read timeouts are connection errors).
_UNREACHABLE = (aiohttp.ClientConnectionError, TimeoutError)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINISHED = frozenset({JobState.DONE, JobState.FAILED})


class JobsFull(Exception):
    """``max_jobs`` jobs are queued or running: nothing can be forgotten to make room."""


class PrefetchFailed(Exception):
    """A blob did not reach an origin's cache (missing, an error, or too slow)."""


@dataclass
class PreheatJob:
    repository: str
    digest: Digest
    tag: str
    source: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    blobs_total: int = 0
    blobs_done: int = 0
    blobs_skipped: int = 0
    blobs_failed: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": str(self.state), "source": self.source,
            "repository": self.repository, "digest": str(self.digest), "tag": self.tag,
            "created": self.created, "started": self.started, "finished": self.finished,
            "progress": {
                "blobs_total": self.blobs_total, "blobs_done": self.blobs_done,
                "blobs_skipped": self.blobs_skipped, "blobs_failed": self.blobs_failed,
                "bytes_total": self.bytes_total, "bytes_done": self.bytes_done,
            },
            "errors": self.errors,
        }


class PreheatMetrics:
    def __init__(self, metrics: Metrics, jobs: PreheatJobs) -> None:
        gauge = metrics.gauge("kraken_proxy_preheat_jobs_current", "Preheat jobs remembered, by state", ["state"])
        for state in JobState:
            gauge.labels(str(state)).set_function(partial(jobs.count, state))
        self.jobs = metrics.counter(
            "kraken_proxy_preheat_jobs_total", "Preheat jobs finished, by state (done, failed)", ["state"])
        self.blobs = metrics.counter(
            "kraken_proxy_preheat_blobs_total",
            "Blobs a preheat asked the origins to cache, by result (prefetched, skipped, failed)", ["result"])
        self.bytes = metrics.counter(
            "kraken_proxy_preheat_bytes_total", "Bytes of the blobs preheated into the origins' caches")
        for state in FINISHED:
            self.jobs.labels(str(state))
        for result in ("prefetched", "skipped", "failed"):
            self.blobs.labels(result)


class PreheatJobs:
    """The jobs of one proxy. ``origins`` and ``http`` give the proxy's clients, which exist
    only while it runs (see kraken.proxy.storage.ProxyStorage.lifecycle)."""

    def __init__(self, config: PreheatServerConfig, metrics: Metrics, origins: Callable[[], OriginCluster],
                 http: Callable[[], HttpClient], max_manifest_size: int, max_references: int) -> None:
        self._config = config
        self._origins = origins
        self._http = http
        self._max_manifest_size = max_manifest_size
        self._max_references = max_references
        self._jobs: OrderedDict[str, PreheatJob] = OrderedDict()
        self._active: dict[tuple[str, Digest], PreheatJob] = {}
        self._running = asyncio.Semaphore(config.max_running_jobs)
        self._fetches = asyncio.Semaphore(config.concurrency)
        self._owner = TaskOwner("preheat")
        self.metrics = PreheatMetrics(metrics, self)

    async def close(self) -> None:
        await self._owner.close()

    def get(self, job_id: str) -> PreheatJob | None:
        return self._jobs.get(job_id)

    def recent(self, limit: int) -> list[PreheatJob]:
        """The newest ``limit`` jobs, newest first."""
        return list(reversed(self._jobs.values()))[:limit]

    def count(self, state: JobState) -> int:
        return sum(1 for job in self._jobs.values() if job.state == state)

    def submit(self, repository: str, digest: Digest, tag: str, source: str) -> PreheatJob:
        """A new job for the image, started in the background, or the unfinished one already
        preheating it. Raises :class:`JobsFull`."""
        existing = self._active.get((repository, digest))
        if existing is not None:
            return existing
        self._make_room()
        job = PreheatJob(repository, digest, tag, source)
        self._jobs[job.id] = job
        self._active[(repository, digest)] = job
        self._owner.spawn(self._run(job), f"job:{job.id}")
        log.info("preheat queued", job=job.id, repository=repository, digest=digest, tag=tag, source=source)
        return job

    def _make_room(self) -> None:
        while len(self._jobs) >= self._config.max_jobs:
            oldest = next((j for j in self._jobs.values() if j.state in FINISHED), None)
            if oldest is None:
                raise JobsFull(f"{len(self._jobs)} preheat jobs are queued or running (server.max_jobs)")
            del self._jobs[oldest.id]

    async def _run(self, job: PreheatJob) -> None:
        ended = False
        try:
            async with self._running:
                job.state, job.started = JobState.RUNNING, time.time()
                await self._preheat(job)
            ended = True
        except Exception as e:  # noqa: BLE001 - whatever stopped it is the job's error
            ended = True
            job.error(f"{type(e).__name__}: {e}")
        finally:
            if not ended:
                job.error("cancelled: the proxy is stopping")
            self._active.pop((job.repository, job.digest), None)
            failed = bool(job.errors) or job.blobs_failed > 0
            job.state, job.finished = (JobState.FAILED if failed else JobState.DONE), time.time()
            self.metrics.jobs.labels(str(job.state)).inc()
            log.log(logging.WARNING if failed else logging.INFO, "preheat finished", job=job.id, state=str(job.state),
                    repository=job.repository, digest=job.digest, blobs=job.blobs_done, failed=job.blobs_failed,
                    skipped=job.blobs_skipped, bytes=job.bytes_done, error=job.errors[0] if job.errors else "")

    async def _preheat(self, job: PreheatJob) -> None:
        blobs = await self._blobs(job)
        wanted = {d: size for d, size in blobs.items() if self._in_size_range(size)}
        job.blobs_total = len(blobs)
        job.blobs_skipped = len(blobs) - len(wanted)
        job.bytes_total = sum(wanted.values())
        self.metrics.blobs.labels("skipped").inc(job.blobs_skipped)
        async with asyncio.TaskGroup() as tasks:
            for digest, size in wanted.items():
                tasks.create_task(self._prefetch_blob(job, digest, size))

    def _in_size_range(self, size: int) -> bool:
        low, high = self._config.prefetch_min_blob_size, self._config.prefetch_max_blob_size
        return size >= low and (high == 0 or size <= high)

    async def _blobs(self, job: PreheatJob) -> dict[Digest, int]:
        """Every blob of the image, manifests included, with its size."""
        raw = await self._read_root(job.repository, job.digest)
        found: dict[Digest, int] = {job.digest: len(raw)}
        await self._walk(job.repository, job.digest, raw, found, depth=0)
        return found

    async def _walk(self, repo: str, digest: Digest, raw: bytes, found: dict[Digest, int], depth: int) -> None:
        try:
            manifest = parse_manifest(raw)
        except ManifestError as e:
            raise PrefetchFailed(f"manifest {digest}: {e}") from None
        if len(manifest.references) > self._max_references:
            raise PrefetchFailed(f"manifest {digest} has {len(manifest.references)} references, "
                                 f"over the limit of {self._max_references}")
        for ref in manifest.references:
            if ref.digest in found:
                continue
            if len(found) >= MAX_BLOBS:
                raise PrefetchFailed(f"the image reaches more than {MAX_BLOBS} blobs and manifests")
            found[ref.digest] = ref.size
            if ref.is_manifest:
                if depth + 1 >= MAX_DEPTH:
                    raise PrefetchFailed(f"manifest {ref.digest}: indexes nested deeper than {MAX_DEPTH}")
                child = await self._read_manifest(repo, ref.digest)
                await self._walk(repo, ref.digest, child, found, depth + 1)

    async def _read_root(self, repo: str, digest: Digest) -> bytes:
        """The job's manifest, asked for again for ``manifest_wait`` while the origins lack it."""
        deadline = time.monotonic() + self._config.manifest_wait
        delay = 0.1
        while True:
            try:
                return await self._read_manifest(repo, digest)
            except BlobNotFound:
                if time.monotonic() + delay > deadline:
                    raise PrefetchFailed(f"manifest {digest} is not in {repo}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _read_manifest(self, repo: str, digest: Digest) -> bytes:
        """A manifest from its origin (which fetches it from the backend if need be), checked
        against its digest and ``max_manifest_size``."""
        resp = await self._origins().open(repo, digest)
        try:
            data = bytearray()
            async for chunk in resp.content.iter_chunked(MANIFEST_CHUNK):
                data += chunk
                if len(data) > self._max_manifest_size:
                    raise PrefetchFailed(f"manifest {digest} is over {self._max_manifest_size} bytes")
        finally:
            resp.release()
        if Digest.of_bytes(bytes(data), digest.algorithm) != digest:
            raise PrefetchFailed(f"manifest {digest}: content does not match its digest")
        return bytes(data)

    async def _prefetch_blob(self, job: PreheatJob, digest: Digest, size: int) -> None:
        async with self._fetches:
            owners = await self._origins().locations(digest)
            deadline = time.monotonic() + self._config.blob_timeout
            outcomes = await asyncio.gather(
                *(self._prefetch_on(host, job.repository, digest, deadline) for host in owners),
                return_exceptions=True)
        failures = [(host, o) for host, o in zip(owners, outcomes, strict=True) if isinstance(o, BaseException)]
        failed = _job_failure(owners, failures)
        if failed is not None:
            host, error = failed
            job.blobs_failed += 1
            job.error(f"{digest} on {host}: {type(error).__name__}: {error}")
            self.metrics.blobs.labels("failed").inc()
            log.warning("preheat of a blob failed", job=job.id, digest=digest, origin=host,
                        error=f"{type(error).__name__}: {error}")
            return
        unreachable = [host for host, _ in failures]
        for host in unreachable:
            log.warning("origin unreachable during preheat; another owner has the blob", job=job.id,
                        digest=digest, origin=host)
        job.blobs_done += 1
        job.bytes_done += size
        self.metrics.blobs.labels("prefetched").inc()
        self.metrics.bytes.inc(size)

    async def _prefetch_on(self, host: str, repo: str, digest: Digest, deadline: float) -> None:
        """Ask ``host`` to cache the blob until it says it has (200)."""
        http = self._http()
        url = http.url(host, f"/namespace/{quote(repo, safe='')}/blobs/{digest}/prefetch")
        delay = POLL_FIRST
        while True:
            resp = await http.request("POST", url, ok=(200, 202, 404))
            resp.release()
            if resp.status == 200:
                return
            if resp.status == 404:
                raise PrefetchFailed("neither the origin nor its backend has the blob")
            if time.monotonic() + delay > deadline:
                raise PrefetchFailed(f"not cached within server.blob_timeout ({self._config.blob_timeout:g}s)")
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)


def _job_failure(owners: list[str], failures: list[tuple[str, BaseException]]) -> tuple[str, BaseException] | None:
    """The failure that fails a blob, if any: an owner's answer (a 404, an error, too slow),
    or every owner unreachable. Some owners unreachable while the others have it is a success."""
    if not owners:
        return "-", PrefetchFailed("no origin owns the blob")
    answered = [(host, e) for host, e in failures if not isinstance(e, _UNREACHABLE)]
    if answered:
        return answered[0]
    return failures[0] if len(failures) == len(owners) else None
