"""A content-addressed store: an upload dir for bytes in flight, a cache dir for verified blobs.

Layout under ``root``::

    uploads/<uid>                              bytes of an upload in progress
    cache/<algo>/<hex[0:2]>/<hex[2:4]>/<hex>   a verified blob
    cache/<algo>/<hex[0:2]>/<hex[2:4]>/<hex>.meta/<name>   metadata kept beside it (e.g. metainfo)

A blob enters the cache only through :meth:`CAStore.commit`: the upload's digest is checked,
the file fsynced and then renamed into place, so a reader never sees a partial or wrong blob
and a failed upload leaves nothing in the cache. Two writers committing the same digest both
succeed: the rename is atomic and the contents are identical by construction.

Writes and hashing happen in worker threads in batches of ``WRITE_BATCH`` bytes, so a large
upload neither blocks the event loop nor sits in memory. The running hash of each upload is
kept, so commit does not re-read the file when the upload was written through this store.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterable, Iterator

from kraken.core.digest import Digest, DigestError, hash_file_sync, new_hasher

WRITE_BATCH = 4 << 20


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


class SizeMismatch(ValueError):
    """The uploaded bytes are not the size the client claimed."""


@dataclass
class _Upload:
    path: Path
    size: int = 0
    hashers: dict = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_active: float = field(default_factory=lambda: time.time())


class CAStore:
    """``durable=False`` skips the fsyncs, for a staging store whose blobs are durable
    elsewhere (the proxy's uploads, which the origin keeps); digests are verified either way."""

    def __init__(self, root: str | Path, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self.upload_dir = self.root / "uploads"
        self.cache_dir = self.root / "cache"
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._uploads: dict[str, _Upload] = {}

    # ---- uploads -------------------------------------------------------------------------

    def create_upload(self) -> str:
        uid = uuid.uuid4().hex
        path = self.upload_dir / uid
        path.touch(exist_ok=False)
        self._uploads[uid] = _Upload(path=path, hashers={"sha256": new_hasher("sha256")})
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
                            await asyncio.to_thread(_write_and_hash, f, batch, upload.hashers)
                            upload.size += pending
                            upload.last_active = time.time()
                            batch, pending = [], 0
                finally:
                    if batch:
                        await asyncio.to_thread(_write_and_hash, f, batch, upload.hashers)
                        upload.size += pending
                    upload.last_active = time.time()
        return upload.size

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
                hasher = upload.hashers.get(digest.algorithm)
                if hasher is not None:
                    actual = Digest(digest.algorithm, hasher.hexdigest())
                else:
                    actual = await asyncio.to_thread(hash_file_sync, upload.path, digest.algorithm)
                if actual != digest:
                    raise DigestMismatch(digest, actual)
                return await asyncio.to_thread(self._install, upload.path, digest)
            finally:
                self._uploads.pop(uid, None)
                upload.path.unlink(missing_ok=True)

    async def abort(self, uid: str) -> None:
        upload = self._uploads.pop(uid, None)
        if upload is None:
            raise UploadUnknown(uid)
        async with upload.lock:
            upload.path.unlink(missing_ok=True)

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

    def exists(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def touch(self, digest: Digest) -> None:
        """Record an access (used by idle-time cleanup)."""
        try:
            os.utime(self.path(digest))
        except FileNotFoundError:
            pass

    async def put_bytes(self, digest: Digest, data: bytes) -> Path:
        """Store a small blob held in memory (manifests), verified like any other."""
        uid = self.create_upload()

        async def one() -> AsyncIterable[bytes]:
            yield data

        await self.write(uid, one())
        return await self.commit(uid, digest)

    async def read_bytes(self, digest: Digest) -> bytes:
        return await asyncio.to_thread(self.path(digest).read_bytes)

    async def import_file(self, src: Path, digest: Digest) -> Path:
        """Verify a file written elsewhere on the same filesystem and move it into the cache."""
        actual = await asyncio.to_thread(hash_file_sync, src, digest.algorithm)
        if actual != digest:
            src.unlink(missing_ok=True)
            raise DigestMismatch(digest, actual)
        return await asyncio.to_thread(self._install, src, digest)

    def delete(self, digest: Digest) -> bool:
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

    def disk_usage(self) -> int:
        return sum(p.stat().st_size for p in self.cache_dir.rglob("*") if p.is_file())

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
        if self.durable:
            _fsync_dir(dst.parent)
        return dst


def _write_and_hash(f, batch: list[bytes], hashers: dict) -> None:
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
