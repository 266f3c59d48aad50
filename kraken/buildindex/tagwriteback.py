"""Tag write-back (``tag_store.write_through: false``): a PUT is durable on this node's disk
and its write to the backend is a persisted, retried task.

Why: with write-through, a push fails (503) whenever the tag backend is down or refuses the
credentials. Here the tag is accepted once it is on disk and its task is queued, as Kraken's
build-index does; the task is retried with backoff, across restarts, until the backend holds
the tag.

What it gives up: until its write-back, a tag exists only on this node. This node answers it
(GETs and listings read the pending copy first, so a push followed by a pull through this node
works), but other nodes sharing the backend do not see it, and a pending tag overrides
whatever the backend says for it on this node. If this node's disk is lost before the
write-back, so is the tag (the client was told it is stored).

Pending tags are files under ``store.root/pending`` (written and fsynced before the PUT
answers), one per tag, each naming the tag and its digest; the queue
(``store.root/tag_writeback.db``) holds one task per (tag, digest) PUT. A task writes the
tag's *current* pending digest, so a re-push never loses to an older task, and drops the
pending copy only if it still holds what was written. At start every pending file is queued
again, which covers a crash between the file and its task.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from kraken.buildindex.config import TagStoreConfig
from kraken.buildindex.tags import Tag, TagError, parse_tag
from kraken.core.digest import Digest, DigestError
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.persisted import PersistedQueue, RetryWorker, Task
from kraken.tasks import TaskOwner

log = get_logger("build-index")

#: Writes a tag's pending digest to the backend; False when none was pending
#: (:meth:`TagStore.write_pending`).
Writer = Callable[[Tag], Awaitable[bool]]


class PendingTags:
    """Tags stored here and not yet in the backend: files under ``root/pending``, mirrored in
    memory (loaded by :meth:`load`). Callers serialise changes to one tag (the store's lock)."""

    def __init__(self, root: Path) -> None:
        self._root = root / "pending"
        self._tags: dict[Tag, Digest] = {}

    def _path(self, tag: Tag) -> Path:
        h = hashlib.sha256(str(tag).encode()).hexdigest()
        return self._root / h[:2] / h

    def get(self, tag: Tag) -> Digest | None:
        return self._tags.get(tag)

    def names(self, prefix: str) -> list[str]:
        return [str(tag) for tag in self._tags if str(tag).startswith(prefix)]

    def __len__(self) -> int:
        return len(self._tags)

    async def load(self) -> dict[Tag, Digest]:
        self._tags = await asyncio.to_thread(self._scan)
        return dict(self._tags)

    async def put(self, tag: Tag, digest: Digest) -> None:
        """Durable on return: the file and its directory entry are synced."""
        await asyncio.to_thread(self._write, tag, digest)
        self._tags[tag] = digest

    async def remove(self, tag: Tag, digest: Digest | None = None) -> bool:
        """Drop ``tag`` (only if it is pending at ``digest``, when given); whether it was dropped."""
        current = self._tags.get(tag)
        if current is None or (digest is not None and current != digest):
            return False
        await asyncio.to_thread(self._path(tag).unlink, True)
        del self._tags[tag]
        return True

    def _write(self, tag: Tag, digest: Digest) -> None:
        path = self._path(tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w") as f:
                json.dump({"tag": str(tag), "digest": str(digest)}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _scan(self) -> dict[Tag, Digest]:
        found: dict[Tag, Digest] = {}
        if not self._root.is_dir():
            return found
        for path in self._root.glob("*/*"):
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write that never finished: its PUT failed
                continue
            try:
                entry = json.loads(path.read_text())
                found[parse_tag(entry["tag"])] = Digest.parse(entry["digest"])
            except (OSError, ValueError, KeyError, TypeError, TagError, DigestError) as e:
                log.error("unreadable pending tag file, skipped", path=str(path), error=str(e))
        return found


def _key(tag: Tag, digest: Digest) -> str:
    return json.dumps([str(tag), str(digest)])


#: Tags pending write-back at most: beyond it a tag PUT is refused (503), as it would be with
#: write-through while the backend is down, instead of growing the pending set without bound.
MAX_PENDING = 100_000


class TagWriteBack:
    """The pending tags, their queue and the worker that drains it; metrics: pending
    write-backs (gauge), failed attempts and completed write-backs (counters)."""

    def __init__(self, pending: PendingTags, queue: PersistedQueue, config: TagStoreConfig,
                 metrics: Metrics) -> None:
        self.pending = pending
        self.write_through = config.write_through
        self._config = config
        self._queue = queue
        self._write: Writer | None = None
        self._pending_gauge = metrics.gauge("kraken_buildindex_tag_writeback_pending",
                                            "Tag write-backs queued (tags stored here, not yet in the backend)")
        self._failures = metrics.counter("kraken_buildindex_tag_writeback_failures_total",
                                         "Failed tag write-back attempts (each is retried)")
        self._done = metrics.counter("kraken_buildindex_tag_writebacks_total", "Tags written back to the backend")
        self.worker = RetryWorker("tag-writeback", queue, self._handle, config.retry_interval,
                                  config.max_retry_interval, config.concurrency, on_count=self._pending_gauge.set)

    async def start(self, owner: TaskOwner, write: Writer) -> None:
        """Load the pending tags, queue each again (a crash may have come between a pending
        file and its task), and start the worker."""
        self._write = write
        for tag, digest in (await self.pending.load()).items():
            await self._queue.add(_key(tag, digest), {"tag": str(tag), "digest": str(digest)})
        if len(self.pending):
            log.info("tags pending write-back", count=len(self.pending))
        self._pending_gauge.set(await self._queue.count())
        self.worker.start(owner)

    def full(self, tag: Tag) -> bool:
        """Whether a PUT of ``tag`` would add one pending tag beyond :data:`MAX_PENDING`."""
        return len(self.pending) >= MAX_PENDING and self.pending.get(tag) is None

    async def enqueue(self, tag: Tag, digest: Digest) -> None:
        await self.worker.add(_key(tag, digest), {"tag": str(tag), "digest": str(digest)})

    async def _handle(self, task: Task) -> None:
        if self._write is None:
            raise RuntimeError("tag write-back not started")
        tag = parse_tag(task.payload["tag"])
        try:
            written = await self._write(tag)
        except Exception as e:
            self._failures.inc()
            log.warning("tag write-back failed, will retry", tag=tag, attempt=task.attempts + 1,
                        error=f"{type(e).__name__}: {e}")
            raise
        if written:
            self._done.inc()
