"""A content-addressed store: an upload dir for bytes in flight, a cache dir for verified blobs.

Layout under ``root``::

    uploads/<uid>                              bytes of an upload in progress
    cache/<algo>/<hex[0:2]>/<hex[2:4]>/<hex>   a verified blob
    cache/<algo>/<hex[0:2]>/<hex[2:4]>/<hex>.meta/<name>   metadata kept beside it (e.g. metainfo)
    quarantine/<algo>-<hex>.<time_ns>          a cached file that failed its digest (the last few)

A blob enters the cache only through :meth:`CAStore.commit`: the upload's digest is checked,
the file fsynced and then renamed into place, so a reader never sees a partial or wrong blob
and a failed upload leaves nothing in the cache. Two writers committing the same digest both
succeed: the rename is atomic and the contents are identical by construction.

Writes and hashing happen in worker threads in batches of ``WRITE_BATCH`` bytes, so a large
upload neither blocks the event loop nor sits in memory. The running hash of each upload is
kept, so commit does not re-read the file when the upload was written through this store;
a durable store flushes an upload to disk while it arrives (kraken.store.flush), so the
fsync at commit is short.

A file in the cache can still go bad later (a disk error, an operator's mistake, a planted
file), so whoever serves cached bytes reads them through :meth:`CAStore.verified_path`. The
store remembers, per digest, the (inode, size, mtime) of the file as it was when last known
good (committed, imported or hashed); a read whose file no longer matches that record (the
first read after a start, or a file written since) hashes the file again in a worker thread.
A file that fails is quarantined (moved aside, counted, logged once) and reported absent, so
the caller fetches a good copy instead of serving wrong bytes.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from prometheus_client import Counter

from kraken.core.digest import Digest, DigestError, hash_file_sync, new_hasher
from kraken.log import get_logger
from kraken.store.flush import EarlyFlush
from kraken.tasks import SingleFlight

#: Bytes of an upload gathered before one write in a worker thread. Each running upload holds
#: up to this much: at 4 MiB, 50 pushes at once took the origin to 464 MiB resident and the
#: proxy to 327; at 1 MiB to 195 and 156 (bench/memory.py).
WRITE_BATCH = 1 << 20

#: How many quarantined files are kept for inspection; older ones are deleted.
QUARANTINE_KEEP = 8

#: How many quarantined digests are remembered for :meth:`CAStore.take_quarantined`.
QUARANTINE_MEMO = 1024

#: How many times a read hashes a cached file that changes while it is hashed.
VERIFY_ATTEMPTS = 3

QUARANTINED_HELP = "Cached blobs that failed their digest on a read and were moved aside"

log = get_logger("kraken.store")

#: What identifies one version of a cached file: (st_ino, st_size, st_mtime_ns).
FileKey = tuple[int, int, int]


class UploadUnknown(KeyError):
    """No upload with this id (never started, committed, or aborted)."""


class UploadOffsetMismatch(ValueError):
    """A chunk did not start where the upload currently ends."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"chunk starts at {got}, upload has {expected} bytes")
        self.expected = expected
        self.got = got


class DigestMismatch(ValueError):
    """The uploaded bytes do not hash to the digest the client claimed."""

    def __init__(self, claimed: Digest, actual: Digest) -> None:
        super().__init__(f"digest mismatch: claimed {claimed}, content is {actual}")
        self.claimed = claimed
        self.actual = actual


class UploadWriteError(Exception):
    """The store could not write an upload's bytes (disk full, I/O error); the upload is gone.

    Not an OSError on purpose: callers tell it apart from a client connection failing."""


class SizeMismatch(ValueError):
    """The uploaded bytes are not the size the client claimed."""


@dataclass
class _Upload:
    path: Path
    size: int = 0
    hashers: dict = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_active: float = field(default_factory=lambda: time.time())
    flush: EarlyFlush | None = None


class CAStore:
    """``durable=False`` skips the fsyncs, for a staging store whose blobs are durable
    elsewhere (the proxy's uploads, which the origin keeps); digests are verified either way.
    ``quarantined`` (the component's ``kraken_<component>_blobs_quarantined_total``, see
    :data:`QUARANTINED_HELP`) counts the files :meth:`verified_path` moved aside."""

    def __init__(self, root: str | Path, durable: bool = True, quarantined: Counter | None = None) -> None:
        self.root = Path(root)
        self.durable = durable
        self.upload_dir = self.root / "uploads"
        self.cache_dir = self.root / "cache"
        self.quarantine_dir = self.root / "quarantine"
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._uploads: dict[str, _Upload] = {}
        self._verified: dict[Digest, FileKey] = {}
        # Concurrent first reads of a digest share one hash; it is cancelled once every
        # reader waiting for it went away.
        self._verifying: SingleFlight[Digest, Path | None] = SingleFlight(name="verify")
        self._quarantined = quarantined
        # Digests quarantined by this process (the most recent ones): a blob the backend
        # lacks may still be had from another origin (see kraken.origin.fetch).
        self._quarantined_digests: OrderedDict[Digest, None] = OrderedDict()

    # ---- uploads -------------------------------------------------------------------------

    def create_upload(self, hashed: bool = True) -> str:
        """A new upload; ``hashed=False`` keeps no running hash, for an upload that is never
        committed here but handed over with :meth:`take_upload` to a store that verifies it
        (saves a sha256 pass over every byte)."""
        uid = uuid.uuid4().hex
        path = self.upload_dir / uid
        path.touch(exist_ok=False)
        hashers = {"sha256": new_hasher("sha256")} if hashed else {}
        self._uploads[uid] = _Upload(path=path, hashers=hashers, flush=EarlyFlush(path) if self.durable else None)
        return uid

    def _upload(self, uid: str) -> _Upload:
        upload = self._uploads.get(uid)
        if upload is None:
            raise UploadUnknown(uid)
        return upload

    def _check_live(self, uid: str, upload: _Upload) -> None:
        """Called with the upload's lock held: an abort or commit that ran while we waited for
        the lock has already deleted the upload, and writing would resurrect its file."""
        if self._uploads.get(uid) is not upload:
            raise UploadUnknown(uid)

    def upload_size(self, uid: str) -> int:
        return self._upload(uid).size

    def has_upload(self, uid: str) -> bool:
        return uid in self._uploads

    async def write(self, uid: str, chunks: AsyncIterable[bytes], offset: int | None = None) -> int:
        """Append ``chunks`` to an upload; ``offset``, when given, must equal its current size.

        Returns the new size. If the stream fails midway, the bytes received so far stay in
        the upload (the client may resume from :meth:`upload_size`) but never reach the cache.
        """
        upload = self._upload(uid)
        async with upload.lock:
            self._check_live(uid, upload)
            if offset is not None and offset != upload.size:
                raise UploadOffsetMismatch(upload.size, offset)
            with open(upload.path, "ab") as f:
                batch: list[bytes] = []
                pending = 0
                try:
                    async for chunk in chunks:
                        batch.append(chunk)
                        pending += len(chunk)
                        if pending >= WRITE_BATCH:
                            full, batch, pending = batch, [], 0
                            await self._append(uid, upload, f, full)
                finally:
                    if batch and self._uploads.get(uid) is upload:
                        await self._append(uid, upload, f, batch)
                    upload.last_active = time.time()
        return upload.size

    async def _append(self, uid: str, upload: _Upload, f: BinaryIO, batch: list[bytes]) -> None:
        """Write a batch; a failed write (disk full, I/O error) ends the upload and deletes
        its file, since the bytes on disk no longer match its running hash."""
        try:
            await asyncio.to_thread(_write_and_hash, f, batch, upload.hashers)
        except OSError as e:
            self._uploads.pop(uid, None)
            upload.path.unlink(missing_ok=True)
            log.error("upload write failed; upload removed", upload=uid, error=f"{type(e).__name__}: {e}")
            raise UploadWriteError(f"cannot store upload {uid}: {e.strerror or e}") from e
        written = sum(map(len, batch))
        upload.size += written
        upload.last_active = time.time()
        if upload.flush is not None:
            upload.flush.written(written)

    async def commit(self, uid: str, digest: Digest, size: int | None = None) -> Path:
        """Verify the upload against ``digest`` and move it into the cache.

        On a mismatch the upload is deleted and :class:`DigestMismatch` raised: nothing of it
        remains anywhere.
        """
        upload = self._upload(uid)
        async with upload.lock:
            self._check_live(uid, upload)
            try:
                if size is not None and size != upload.size:
                    raise SizeMismatch(f"upload has {upload.size} bytes, expected {size}")
                await self._check_digest(upload, digest)
                if upload.flush is not None:
                    await upload.flush.wait()
                return await asyncio.to_thread(self._install, upload.path, digest)
            finally:
                self._uploads.pop(uid, None)
                upload.path.unlink(missing_ok=True)

    async def discard_checked(self, uid: str, digest: Digest) -> None:
        """Delete the upload, raising :class:`DigestMismatch` if it does not hash to
        ``digest``: for a caller that needs none of its bytes (the blob is cached already) but
        still answers a wrong upload as wrong."""
        upload = self._upload(uid)
        async with upload.lock:
            self._check_live(uid, upload)
            try:
                await self._check_digest(upload, digest)
            finally:
                self._uploads.pop(uid, None)
                upload.path.unlink(missing_ok=True)

    async def _check_digest(self, upload: _Upload, digest: Digest) -> None:
        """From the running hash when the upload keeps one, else by reading its file."""
        hasher = upload.hashers.get(digest.algorithm)
        if hasher is not None:
            actual = Digest(digest.algorithm, hasher.hexdigest())
        else:
            actual = await asyncio.to_thread(hash_file_sync, upload.path, digest.algorithm)
        if actual != digest:
            raise DigestMismatch(digest, actual)

    async def take_upload(self, uid: str) -> Path:
        """End the upload without verifying it and hand its file (still in the upload dir,
        never in the cache) to the caller, who deletes it: for bytes that a store verifying
        them keeps, if anyone does."""
        upload = self._upload(uid)
        async with upload.lock:
            self._check_live(uid, upload)
            del self._uploads[uid]
        return upload.path

    async def abort(self, uid: str) -> None:
        upload = self._uploads.pop(uid, None)
        if upload is None:
            raise UploadUnknown(uid)
        async with upload.lock:
            upload.path.unlink(missing_ok=True)

    def clear_uploads(self) -> int:
        """Delete every file in the upload dir that no upload of this process owns: at start,
        these are what a previous process left (killed mid-push, disk full); uploads are not
        resumable across restarts, so they are garbage. Blocking: call it in a worker thread."""
        removed = 0
        for path in self.upload_dir.iterdir():
            if path.name not in self._uploads:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def cleanup_uploads(self, max_age: float) -> int:
        """Delete uploads idle (no bytes written) for ``max_age`` seconds, and stray files left
        by a crash.

        A stray file (no upload of this process knows it) is deleted only once it too is
        older than ``max_age``: between :meth:`create_upload` creating a file and registering
        it, the file is briefly unknown, and must not be taken for a crash's leftover.
        """
        now = time.time()
        removed = 0
        for uid, upload in list(self._uploads.items()):
            if now - upload.last_active > max_age and not upload.lock.locked():
                self._uploads.pop(uid, None)
                upload.path.unlink(missing_ok=True)
                removed += 1
        for path in self.upload_dir.iterdir():
            if path.name in self._uploads:
                continue
            try:
                stale = now - path.stat().st_mtime > max_age
            except FileNotFoundError:
                continue
            if stale:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # ---- the cache -----------------------------------------------------------------------

    def path(self, digest: Digest) -> Path:
        h = digest.hex
        return self.cache_dir / digest.algorithm / h[0:2] / h[2:4] / h

    def digest_of(self, path: Path) -> Digest | None:
        """The digest whose cache file ``path`` is (the inverse of :meth:`path`), else None."""
        try:
            digest = Digest.parse(f"{path.parent.parent.parent.name}:{path.name}")
        except DigestError:
            return None
        return digest if self.path(digest) == path else None

    def exists(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def touch(self, digest: Digest) -> None:
        """Record an access (used by idle-time cleanup). A file verified before keeps its
        record (the new mtime is ours), unless it had already changed since."""
        path = self.path(digest)
        try:
            still_good = self._verified.get(digest) == _file_key(os.stat(path))
            os.utime(path)
            if still_good:
                self._verified[digest] = _file_key(os.stat(path))
        except FileNotFoundError:
            self._verified.pop(digest, None)

    async def verified_path(self, digest: Digest) -> Path | None:
        """The cached blob's path once its content is known to match ``digest``; None if it
        is not cached, or failed the check (then it is quarantined).

        Cheap (a stat) when the file is as it was when last verified; otherwise the file is
        hashed in a worker thread, once however many readers ask at the same time.
        """
        path = self.path(digest)
        key = file_key(path)
        if key is None:
            return None
        if self._verified.get(digest) == key:
            return path
        return await self._verifying.run(digest, lambda: self._verify(digest, path))

    def adopt_verified(self, digest: Digest, key: FileKey | None) -> bool:
        """Record the cached file of ``digest`` as verified if it is still the file ``key``
        (from :func:`file_key`) described when the caller hashed it: for a file checked
        elsewhere and then moved in by a rename, which keeps inode, size and mtime (the
        agent's downloads, which libtorrent moves into the cache). Saves hashing it again on
        its first read; False (and nothing recorded) when the file is another."""
        if key is None or file_key(self.path(digest)) != key:
            return False
        self._verified[digest] = key
        return True

    async def recheck(self, digest: Digest) -> Path | None:
        """:meth:`verified_path` after forgetting that the file was verified: for a reader
        that found the bytes wrong by other means (a torrent piece failing its hash)."""
        self._verified.pop(digest, None)
        return await self.verified_path(digest)

    async def _verify(self, digest: Digest, path: Path) -> Path | None:
        """Hash ``path`` (the one flight of ``digest``'s verification) unless it is known good.

        A file replaced or written while it was hashed is looked at again, a few times; one
        that never holds still is reported absent (the caller fetches a copy it can trust).
        """
        for _ in range(VERIFY_ATTEMPTS):
            before = file_key(path)
            if before is None:
                return None
            if self._verified.get(digest) == before:
                return path
            try:
                actual = await asyncio.to_thread(hash_file_sync, path, digest.algorithm)
            except FileNotFoundError:
                return None
            if file_key(path) != before:
                continue
            if actual == digest:
                self._verified[digest] = before
                return path
            if not await asyncio.to_thread(self._quarantine, digest, path, before):
                continue
            self._quarantined_digests[digest] = None
            if len(self._quarantined_digests) > QUARANTINE_MEMO:
                self._quarantined_digests.popitem(last=False)
            log.error("cached blob is corrupt; quarantined", digest=digest, actual=actual,
                      size=before[1], path=path, quarantine=self.quarantine_dir)
            if self._quarantined is not None:
                self._quarantined.inc()
            return None
        log.warning("cached blob kept changing while it was verified", digest=digest, path=path)
        return None

    def take_quarantined(self, digest: Digest) -> bool:
        """Whether this process quarantined ``digest`` (and has not been asked since)."""
        return self._quarantined_digests.pop(digest, False) is None

    def _quarantine(self, digest: Digest, path: Path, key: FileKey) -> bool:
        """Move the bad file (only that version of it: False if it changed) out of the cache,
        with its metadata (metainfo generated from bad bytes is bad too); keep the last few
        for inspection."""
        if file_key(path) != key:
            return False
        self._verified.pop(digest, None)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        os.replace(path, self.quarantine_dir / f"{digest.algorithm}-{digest.hex}.{time.time_ns()}")
        shutil.rmtree(self._meta_dir(digest), ignore_errors=True)
        # Oldest first by the time in the name (a rename keeps the file's own mtime).
        kept = sorted(self.quarantine_dir.iterdir(), key=lambda p: p.name.rsplit(".", 1)[-1].zfill(20))
        for old in kept[:-QUARANTINE_KEEP]:
            old.unlink(missing_ok=True)
        return True

    async def put_bytes(self, digest: Digest, data: bytes) -> Path:
        """Store a small blob held in memory (manifests), verified like any other."""
        uid = self.create_upload()

        async def one() -> AsyncIterable[bytes]:
            yield data

        await self.write(uid, one())
        return await self.commit(uid, digest)

    async def read_bytes(self, digest: Digest) -> bytes:
        return await asyncio.to_thread(self.path(digest).read_bytes)

    async def import_file(self, src: Path, digest: Digest, hashed: Digest | None = None) -> Path:
        """Verify a file written elsewhere on the same filesystem and move it into the cache.

        ``hashed``: the digest of ``src`` computed by whoever wrote it, of the bytes as they
        were written (a backend's :meth:`~kraken.backend.Backend.download_hashed`); it is
        trusted as the running hash of an upload is at :meth:`commit`, so the file is not
        read again."""
        actual = hashed if hashed is not None else await asyncio.to_thread(hash_file_sync, src, digest.algorithm)
        if actual != digest:
            src.unlink(missing_ok=True)
            raise DigestMismatch(digest, actual)
        return await asyncio.to_thread(self._install, src, digest)

    def delete(self, digest: Digest) -> bool:
        self._verified.pop(digest, None)
        path = self.path(digest)
        existed = path.is_file()
        path.unlink(missing_ok=True)
        shutil.rmtree(self._meta_dir(digest), ignore_errors=True)
        return existed

    def digests(self) -> Iterator[Digest]:
        """Every blob in the cache (metadata dirs and stray temp files are skipped)."""
        for algo_dir in self.cache_dir.iterdir():
            for path in algo_dir.glob("*/*/*"):
                if path.is_file():
                    try:
                        yield Digest.parse(f"{algo_dir.name}:{path.name}")
                    except DigestError:
                        continue

    # ---- metadata beside a blob ----------------------------------------------------------

    def _meta_dir(self, digest: Digest) -> Path:
        p = self.path(digest)
        return p.with_name(p.name + ".meta")

    def meta_path(self, digest: Digest, name: str) -> Path:
        return self._meta_dir(digest) / name

    async def write_meta(self, digest: Digest, name: str, data: bytes) -> None:
        await asyncio.to_thread(_atomic_write, self.meta_path(digest, name), data)

    async def read_meta(self, digest: Digest, name: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self.meta_path(digest, name).read_bytes)
        except FileNotFoundError:
            return None

    # ---- internals -----------------------------------------------------------------------

    def _install(self, src: Path, digest: Digest) -> Path:
        dst = self.path(digest)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if self.durable:
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(src, dst)
        self._verified[digest] = _file_key(os.stat(dst))
        if self.durable:
            _fsync_dir(dst.parent)
        return dst


def _file_key(st: os.stat_result) -> FileKey:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def file_key(path: Path) -> FileKey | None:
    """What :class:`CAStore` compares to tell a verified file from a changed one: (inode,
    size, mtime), or None when ``path`` does not exist."""
    try:
        return _file_key(os.stat(path))
    except FileNotFoundError:
        return None


def _write_and_hash(f: BinaryIO, batch: list[bytes], hashers: dict) -> None:
    for chunk in batch:
        f.write(chunk)
        for h in hashers.values():
            h.update(chunk)
    f.flush()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
