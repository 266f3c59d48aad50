"""Tag storage: the backend is the source of truth, a local cache is the fallback.

Why this shape: the original kept tags first-write-wins per node and cached them for minutes,
so a re-pushed tag resolved to the old image on some nodes. Here:

* a PUT writes the backend first (write-through) and returns only once the backend has the
  tag, so a restarted node or any other node sharing the backend sees it;
* a GET asks the backend unless this node wrote or confirmed the tag less than ``ttl`` seconds
  ago (``ttl = 0``, the default, means always ask), so with several nodes on one backend a
  stale digest is served for at most ``ttl``;
* the cache never holds an older digest than a PUT through this node: a read that raced with
  a local PUT does not store what it read (a per-tag generation counter detects the race);
* when the backend is unreachable, a GET answers from the local cache (in memory, else on
  disk under ``root``) rather than failing a pull, and says so in the log and metrics.

Those guarantees hold with ``tag_store.write_through: true`` (the default). With ``false`` a
PUT only stores the tag on this node's disk and queues its write to the backend
(:mod:`kraken.buildindex.tagwriteback`, which says what that gives up); until written back,
this node answers the tag from its pending copy. Writes to the backend of one tag (a
write-through PUT, a write-back) are serialised, so an older digest never lands after a newer.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kraken.backend import Backend, BackendError, BackendNotFound, BackendRouter
from kraken.buildindex.tags import Tag, TagError, parse_tag
from kraken.buildindex.tagwriteback import TagWriteBack
from kraken.core.digest import Digest, DigestError
from kraken.log import get_logger

log = get_logger("build-index")

LOCK_STRIPES = 64

Source = Literal["backend", "cache", "fallback", "pending"]


class TagStoreError(Exception):
    """The backend holds something for the tag that is not a digest."""


@dataclass(frozen=True)
class Lookup:
    """The digest a tag resolves to (``None``: no such tag) and where the answer came from."""

    digest: Digest | None
    source: Source


@dataclass
class _Cached:
    digest: Digest
    confirmed_at: float  # time.monotonic() of the last backend read or write-through


class TagStore:
    """Tags of every repository; ``router`` picks a repository's backend (a listing by a prefix
    that names no repository asks every one of ``router.backends``). Without ``writeback``
    every PUT is written through."""

    def __init__(self, root: Path, router: BackendRouter, ttl: float, writeback: TagWriteBack | None = None) -> None:
        self._root = root / "tags"
        self._router = router
        self._ttl = ttl
        self._writeback = writeback
        self._memory: dict[Tag, _Cached] = {}
        self._generation: dict[Tag, int] = {}
        # Striped rather than one lock per tag, so the lock table stays bounded. ``_locks``
        # guard the cached state; ``_writers`` serialise one tag's writes to the backend
        # (taken first when both are held).
        self._locks = [asyncio.Lock() for _ in range(LOCK_STRIPES)]
        self._writers = [asyncio.Lock() for _ in range(LOCK_STRIPES)]

    def _lock(self, tag: Tag) -> asyncio.Lock:
        return self._locks[hash(tag) % LOCK_STRIPES]

    def _writer(self, tag: Tag) -> asyncio.Lock:
        return self._writers[hash(tag) % LOCK_STRIPES]

    def _path(self, tag: Tag) -> Path:
        # Hashed so any valid tag maps to a short, safe file name on any file system.
        h = hashlib.sha256(str(tag).encode()).hexdigest()
        return self._root / h[:2] / h

    async def get(self, tag: Tag) -> Lookup:
        pending = None if self._writeback is None else self._writeback.pending.get(tag)
        if pending is not None:
            return Lookup(pending, "pending")
        cached = self._memory.get(tag)
        if cached is not None and time.monotonic() - cached.confirmed_at < self._ttl:
            return Lookup(cached.digest, "cache")
        generation = self._generation.get(tag, 0)
        backend = self._router.for_namespace(tag.repo)
        try:
            data = await backend.download_bytes(tag.repo, str(tag))
        except BackendNotFound:
            await self._remember_read(tag, None, generation)
            return Lookup(None, "backend")
        except BackendError as e:
            digest = cached.digest if cached is not None else await asyncio.to_thread(self._read_local, tag)
            if digest is None:
                raise
            log.warning("backend unavailable, serving tag from local cache", tag=tag, digest=digest, error=e)
            return Lookup(digest, "fallback")
        try:
            digest = Digest.parse(data.decode("utf-8", errors="replace").strip())
        except DigestError as e:
            raise TagStoreError(f"backend holds no valid digest for {tag}: {e}") from None
        await self._remember_read(tag, digest, generation)
        return Lookup(digest, "backend")

    async def put(self, tag: Tag, digest: Digest) -> None:
        """Write ``tag -> digest`` to the backend, then to the local cache; in write-back mode,
        to this node's pending tags and the write-back queue."""
        writeback = self._writeback
        if writeback is not None and not writeback.write_through:
            self._router.for_namespace(tag.repo)  # no backend for the repository: refused now
            if writeback.full(tag):
                raise BackendError(f"{len(writeback.pending)} tags already wait for their write-back; "
                                   f"the tag backend must catch up first")
            async with self._lock(tag):
                await writeback.pending.put(tag, digest)
                self._generation[tag] = self._generation.get(tag, 0) + 1
                # Shielded: a PUT cancelled here must not leave a pending tag without its task.
                await asyncio.shield(writeback.enqueue(tag, digest))
            log.info("tag stored, write-back queued", tag=tag, digest=digest)
            return
        backend = self._router.for_namespace(tag.repo)
        async with self._writer(tag), self._lock(tag):
            # Drop the cached value first: if the write fails or is cancelled midway, the
            # backend (which may or may not hold the new digest) decides the next read.
            self._memory.pop(tag, None)
            try:
                await backend.upload_bytes(tag.repo, str(tag), str(digest).encode())
                self._memory[tag] = _Cached(digest, time.monotonic())
                await asyncio.to_thread(self._write_local, tag, digest)
                if writeback is not None:
                    await writeback.pending.remove(tag)  # left by an earlier write-back run
            finally:
                # Reads that started before this point may have seen the old digest.
                self._generation[tag] = self._generation.get(tag, 0) + 1
        log.info("tag stored", tag=tag, digest=digest)

    async def write_pending(self, tag: Tag) -> bool:
        """Write ``tag``'s pending digest to the backend; once there, it is cached as a
        write-through PUT's would be and no longer pending, unless a newer PUT replaced it
        meanwhile (its own task writes that one). False: nothing was pending."""
        if self._writeback is None:
            return False
        pending = self._writeback.pending
        async with self._writer(tag):
            digest = pending.get(tag)
            if digest is None:
                return False  # written already, by another task or a write-through PUT
            backend = self._router.for_namespace(tag.repo)
            await backend.upload_bytes(tag.repo, str(tag), str(digest).encode())
            async with self._lock(tag):
                if not await pending.remove(tag, digest):
                    return True
                self._memory[tag] = _Cached(digest, time.monotonic())
                self._generation[tag] = self._generation.get(tag, 0) + 1
                try:
                    await asyncio.to_thread(self._write_local, tag, digest)
                except OSError as e:
                    log.warning("cannot update local tag cache", tag=tag, error=e)
        log.info("tag written back", tag=tag, digest=digest)
        return True

    async def list(self, prefix: str) -> list[str]:
        """Sorted ``repo:tag`` names starting with ``prefix``, always read from the backends."""
        repo, sep, _ = prefix.rpartition(":")
        if sep:
            owner = self._owner(repo)
            candidates = [] if owner is None else [owner]
        else:
            candidates = list({id(b): b for b in self._router.backends}.values())
        names: set[str] = set()
        for backend in candidates:
            for name in await backend.list(prefix):
                try:
                    tag = parse_tag(name)
                except TagError:
                    continue  # not a tag (e.g. a stray object in a shared bucket)
                # A name counts only in the backend its repository routes to, as for reads.
                if name.startswith(prefix) and self._owner(tag.repo) is backend:
                    names.add(name)
        if self._writeback is not None:
            names.update(self._writeback.pending.names(prefix))
        return sorted(names)

    def _owner(self, repo: str) -> Backend | None:
        try:
            return self._router.for_namespace(repo)
        except BackendError:
            return None

    async def _remember_read(self, tag: Tag, digest: Digest | None, generation: int) -> None:
        """Cache what a read got from the backend, unless a local PUT happened meanwhile."""
        async with self._lock(tag):
            if self._generation.get(tag, 0) != generation:
                return
            cached = self._memory.get(tag)
            if digest is not None and cached is not None and cached.digest == digest:
                cached.confirmed_at = time.monotonic()
                return
            try:
                if digest is None:
                    self._memory.pop(tag, None)
                    await asyncio.to_thread(self._remove_local, tag)
                else:
                    self._memory[tag] = _Cached(digest, time.monotonic())
                    await asyncio.to_thread(self._write_local, tag, digest)
            except OSError as e:
                # The backend answered; a broken local cache only costs the outage fallback.
                log.warning("cannot update local tag cache", tag=tag, error=e)

    def _read_local(self, tag: Tag) -> Digest | None:
        try:
            return Digest.parse(self._path(tag).read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, DigestError) as e:
            log.warning("unreadable local tag cache entry", tag=tag, error=e)
            return None

    def _write_local(self, tag: Tag, digest: Digest) -> None:
        path = self._path(tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(str(digest))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_local(self, tag: Tag) -> None:
        self._path(tag).unlink(missing_ok=True)
