"""Cross-cluster tag replication: a tag pushed here, and every blob its image needs, copied to
the build-indexes and origins of other clusters (Kraken's ``remotes`` and ``tag_replication``).

``remotes`` maps a remote cluster's build-index (``host:port``) to tag regexes (searched in the
whole tag ``repo:tag``, unanchored, as Kraken's do). A tag PUT with ``?replicate=true`` (what the
proxy sends) queues, per matching remote, a persisted task (``<store.root>/replication.db``)
retried with backoff until it succeeds, across restarts. A task:

1. asks the remote build-index for the tag: if it has it, the work is done (its own
   replication, or an earlier attempt, got there first);
2. asks the remote build-index for its origin cluster (``GET /origin``);
3. has the owner of each blob here copy it to that cluster (origin ``POST .../remote/<cluster>``,
   kraken.origin.remote): the manifest, its children for an index, and every layer and config;
4. puts the tag on the remote build-index with ``?replicate=true``, so the remote replicates it
   onwards to its own remotes (step 1 ends a cycle).

With several build-indexes in this cluster (``cluster``), each one that takes a replicated PUT
also hands the task to the others (``POST /internal/duplicate/remotes/tags/<tag>/digest/<d>``),
each with ``tagserver.duplicate_replicate_stagger`` more delay than the last: if this node dies
before its task succeeds, a neighbour's copy runs later; if it succeeded, step 1 makes the
duplicate a no-op.
"""
from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from kraken.buildindex.client import BuildIndexClient, TagReferenceError
from kraken.buildindex.tags import Tag, parse_tag
from kraken.config import ConfigError, Duration
from kraken.core.digest import Digest
from kraken.http.addresses import split_host_port
from kraken.http.client import HttpClient, HTTPStatusError
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import BlobNotFound, BlobNotReady, OriginCluster
from kraken.persisted import PersistedQueue, RetryWorker, Task
from kraken.tasks import TaskOwner

log = get_logger("build-index")

#: Tasks queued at most (a tag PUT beyond it is refused with 503 rather than growing the queue).
MAX_QUEUED = 100_000
#: Dependencies a task may carry: an image reaching more is not replicated (logged and counted).
MAX_DEPENDENCIES = 10_000
#: Attempts after which an error that retrying cannot fix (the remote refuses with a 4xx, a
#: blob is gone from every origin) drops the task instead of retrying it for ever.
MAX_PERMANENT_FAILURES = 10
#: Seconds a neighbour may take to take a duplicate task (a tag PUT waits for it).
NEIGHBOUR_TIMEOUT = 2.0


@dataclass
class TagReplicationConfig:
    """Retry schedule of the replication tasks (Kraken's ``tag_replication``)."""

    retry_interval: Duration = 1.0
    max_retry_interval: Duration = 300.0
    concurrency: int = 4

    def __post_init__(self) -> None:
        if self.retry_interval <= 0 or self.max_retry_interval < self.retry_interval or self.concurrency < 1:
            raise ConfigError("tag_replication: retry_interval > 0, max_retry_interval >= retry_interval, "
                              "concurrency >= 1")


@dataclass
class TagServerConfig:
    """Kraken's ``tagserver`` section: the delay between neighbours' duplicate tasks."""

    duplicate_replicate_stagger: Duration = 1200.0


@dataclass
class ClusterConfig:
    """The other build-indexes of this cluster (Kraken's ``cluster: {static: [...]}``)."""

    static: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Remote:
    addr: str
    pattern: re.Pattern[str]


def build_remotes(config: dict[str, list[str]]) -> list[Remote]:
    """``remotes:`` -> matchers; a bad address or regex is a config error at start."""
    remotes = []
    for addr, patterns in config.items():
        try:
            split_host_port(addr)
        except ValueError as e:
            raise ConfigError(f"remotes: {e}") from None
        for pattern in patterns:
            try:
                remotes.append(Remote(addr, re.compile(pattern)))
            except re.error as e:
                raise ConfigError(f"remotes.{addr}: bad regex {pattern!r}: {e}") from None
    return remotes


class TagReplicator:
    """The persisted replication queue and its worker; started and closed by the build-index."""

    def __init__(self, queue: PersistedQueue, remotes: list[Remote], origins: OriginCluster, http: HttpClient,
                 config: TagReplicationConfig, metrics: Metrics,
                 current: Callable[[Tag], Awaitable[Digest | None]]) -> None:
        self._queue = queue
        self._remotes = remotes
        self._origins = origins
        self._http = http
        self._current = current
        pending = metrics.gauge("kraken_buildindex_replication_pending", "Tag replication tasks queued")
        self._done = metrics.counter("kraken_buildindex_replications_total",
                                     "Tag replication tasks by result (copied, present, superseded, dropped, "
                                     "too_large)", ["result"])
        self._failures = metrics.counter("kraken_buildindex_replication_failures_total",
                                         "Failed tag replication attempts")
        self.worker = RetryWorker("tag-replication", queue, self._handle, config.retry_interval,
                                  config.max_retry_interval, config.concurrency, on_count=pending.set)

    def start(self, owner: TaskOwner) -> None:
        self.worker.start(owner)

    def destinations(self, tag: Tag) -> list[str]:
        """The remotes whose regexes match ``tag``, each once, in config order."""
        matched: list[str] = []
        for remote in self._remotes:
            if remote.pattern.search(str(tag)) and remote.addr not in matched:
                matched.append(remote.addr)
        return matched

    async def replicate(self, tag: Tag, digest: Digest, dependencies: list[Digest], delay: float = 0.0) -> list[str]:
        """Queue one task per matching remote; the remotes queued for. A task per (tag, digest,
        remote): a re-pushed tag gets its own, never swallowed by an older one still waiting.
        Raises OverflowError when the queue is full."""
        destinations = self.destinations(tag)
        if not destinations:
            return []
        if len(dependencies) > MAX_DEPENDENCIES:
            self._done.labels("too_large").inc()
            log.error("tag not replicated: its image reaches too many blobs", tag=tag, digest=digest,
                      blobs=len(dependencies), limit=MAX_DEPENDENCIES)
            return []
        if await self._queue.count() >= MAX_QUEUED:
            raise OverflowError(f"tag replication queue full ({MAX_QUEUED} tasks)")
        for dest in destinations:
            payload = {"tag": str(tag), "digest": str(digest), "destination": dest,
                       "dependencies": [str(d) for d in dependencies]}
            if await self.worker.add(json.dumps([str(tag), str(digest), dest]), payload, delay):
                log.info("tag replication queued", tag=tag, digest=digest, remote=dest, delay=delay)
        return destinations

    async def _handle(self, task: Task) -> None:
        tag, dest = parse_tag(task.payload["tag"]), task.payload["destination"]
        digest = Digest.parse(task.payload["digest"])
        if await self._current(tag) != digest:
            # Re-pushed (or gone) since: the newer digest has a task of its own, and this one
            # must not put the older image back on the remote.
            self._done.labels("superseded").inc()
            log.info("tag replication dropped: the tag points elsewhere now", tag=tag, digest=digest, remote=dest)
            return
        try:
            copied = await self._replicate(tag, digest, [Digest.parse(d) for d in task.payload["dependencies"]], dest)
        except (aiohttp.ClientError, TimeoutError, ConnectionError, HTTPStatusError, LookupError, BlobNotFound,
                BlobNotReady, TagReferenceError) as e:
            self._failures.inc()
            if _permanent(e) and task.attempts + 1 >= MAX_PERMANENT_FAILURES:
                self._done.labels("dropped").inc()
                log.error("tag replication given up", tag=tag, digest=digest, remote=dest,
                          attempts=task.attempts + 1, error=f"{type(e).__name__}: {e}")
                return
            log.warning("tag replication failed, will retry", tag=tag, digest=digest, remote=dest,
                        attempt=task.attempts + 1, error=f"{type(e).__name__}: {e}")
            raise
        self._done.labels("copied" if copied else "present").inc()

    async def _replicate(self, tag: Tag, digest: Digest, dependencies: list[Digest], dest: str) -> bool:
        """False if the remote had the tag already, True once blobs and tag are copied."""
        remote = BuildIndexClient(dest, self._http)
        if await remote.get_tag(str(tag)) == digest:
            log.info("tag replication not needed, remote has the tag", tag=tag, digest=digest, remote=dest)
            return False
        cluster = await remote.origin()
        for dep in dependencies:
            await self._origins.replicate_to_remote(tag.repo, dep, cluster)
        await remote.put_tag(str(tag), digest, replicate=True)
        log.info("tag replicated", tag=tag, digest=digest, remote=dest, blobs=len(dependencies))
        return True


def _permanent(error: BaseException) -> bool:
    """An error that retrying will not fix: refused by the remote (4xx), or a blob no origin has."""
    return isinstance(error, (BlobNotFound, TagReferenceError)) or (
        isinstance(error, HTTPStatusError) and 400 <= error.status < 500)
