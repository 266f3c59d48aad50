"""Blob upload sessions of the registry protocol, staged in a :class:`CAStore`.

The bytes of a session live in the store's upload dir (streamed to disk, hashed as they
arrive); each session is bound to the repository it was started in, so a session id is no
key to another repository. Finishing verifies the digest through ``CAStore.commit`` (a
mismatch deletes the upload: no blob anywhere), hands the verified file to the storage and
then deletes the local copy. Sessions are in memory: a restart forgets them (their owner
clears the files at start), and clients restart such uploads on BLOB_UPLOAD_UNKNOWN.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterable, AsyncIterator

from kraken.core.digest import Digest
from kraken.log import get_logger
from kraken.registry.errors import RegistryError
from kraken.registry.ranges import upload_range_header
from kraken.registry.storage import RegistryStorage
from kraken.store.cas import CAStore, DigestMismatch, SizeMismatch, UploadOffsetMismatch, UploadUnknown

log = get_logger("kraken.registry.uploads")


class UploadSessions:
    def __init__(self, cas: CAStore, ttl: float) -> None:
        self.cas = cas
        self.ttl = ttl
        self._repos: dict[str, str] = {}
        # One commit per digest at a time: the verified file sits at the digest's cache path
        # until the storage has it, so a second commit of the same digest must not replace or
        # delete it under the first.
        self._digest_locks = _KeyedLocks()

    def start(self, repo: str) -> str:
        uid = self.cas.create_upload()
        self._repos[uid] = repo
        return uid

    def is_open(self, uid: str) -> bool:
        return uid in self._repos and self.cas.has_upload(uid)

    def size(self, repo: str, uid: str) -> int:
        """Bytes received so far; BLOB_UPLOAD_UNKNOWN if ``uid`` is not a session of ``repo``."""
        self.check(repo, uid)
        try:
            return self.cas.upload_size(uid)
        except UploadUnknown:
            raise _unknown(uid) from None

    def check(self, repo: str, uid: str) -> None:
        """BLOB_UPLOAD_UNKNOWN unless ``uid`` is an open session of ``repo``."""
        if self._repos.get(uid) != repo or not self.cas.has_upload(uid):
            raise _unknown(uid)

    async def append(self, repo: str, uid: str, chunks: AsyncIterable[bytes], start: int | None) -> int:
        """Stream ``chunks`` onto the session; ``start`` (from Content-Range) must be its size."""
        self.check(repo, uid)
        try:
            return await self.cas.write(uid, chunks, offset=start)
        except UploadUnknown:
            raise _unknown(uid) from None
        except UploadOffsetMismatch as e:
            raise RegistryError(
                "RANGE_INVALID", detail=str(e),
                headers={"Range": upload_range_header(e.expected), "Docker-Upload-UUID": uid},
            ) from None

    async def finish(self, repo: str, uid: str, digest: Digest, storage: RegistryStorage) -> None:
        """Verify the session against ``digest`` and store the blob in ``storage``."""
        self.check(repo, uid)
        async with self._digest_locks.hold(digest):
            try:
                path = await self.cas.commit(uid, digest)
            except UploadUnknown:
                raise _unknown(uid) from None
            except (DigestMismatch, SizeMismatch) as e:
                raise RegistryError("DIGEST_INVALID", detail=str(e)) from None
            finally:
                self._repos.pop(uid, None)
            try:
                await storage.put_blob_from_file(repo, digest, path)
            finally:
                await asyncio.to_thread(self.cas.delete, digest)

    async def cancel(self, repo: str, uid: str) -> None:
        self.check(repo, uid)
        self._repos.pop(uid, None)
        try:
            await self.cas.abort(uid)
        except UploadUnknown:
            raise _unknown(uid) from None

    async def cleanup(self) -> int:
        """Delete sessions older than the TTL (and their files), and stray files as old."""
        removed = await asyncio.to_thread(self.cas.cleanup_uploads, self.ttl)
        for uid in [u for u in self._repos if not self.cas.has_upload(u)]:
            del self._repos[uid]
        return removed

    async def run_cleanup(self) -> None:
        """Forever: clean abandoned sessions a few times per TTL."""
        interval = min(max(self.ttl / 4, 1.0), 300.0)
        while True:
            await asyncio.sleep(interval)
            removed = await self.cleanup()
            if removed:
                log.info("removed abandoned uploads", count=removed)


class _KeyedLocks:
    """One lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Digest, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Digest) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _unknown(uid: str) -> RegistryError:
    return RegistryError("BLOB_UPLOAD_UNKNOWN", detail={"uuid": uid})
