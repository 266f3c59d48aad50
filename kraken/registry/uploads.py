"""Blob upload sessions of the registry protocol, staged in a :class:`CAStore`.

The bytes of a session live in the store's upload dir (streamed to disk, hashed as they
arrive); each session is bound to the repository it was started in, so a session id is no
key to another repository. When the storage offers a :class:`BlobWriter`, every chunk is also
passed to it as it arrives (the proxy streams it on to an origin), so that finishing is a
short commit rather than a second transfer. Finishing verifies the digest through
``CAStore.commit`` (a mismatch deletes the upload and aborts the writer: no blob anywhere),
then commits the writer or, if there is none or it failed, hands the verified file to the
storage; then it deletes the local copy. A storage that verifies what it is given
(``RegistryStorage.verifies_uploads``: the proxy, whose origins check the digest before they
commit) gets the bytes unhashed instead, and its DIGEST_INVALID is the client's answer: every
byte is hashed once on its way in, by the process that keeps it. Sessions are in memory: a
restart forgets them (their owner clears the files at start), and clients restart such
uploads on BLOB_UPLOAD_UNKNOWN.

Each open session is a file on disk until it ends or its TTL passes, and anyone may open one,
so their number is capped (:class:`UploadLimits`): per client address (429 TOOMANYREQUESTS,
one client cannot take every slot) and in total (503 UNAVAILABLE), both with ``Retry-After``.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from kraken.core.digest import Digest
from kraken.log import get_logger
from kraken.registry.errors import RegistryError
from kraken.registry.ranges import upload_range_header
from kraken.registry.storage import BlobWriter, RegistryStorage
from kraken.store.cas import (
    CAStore,
    DigestMismatch,
    SizeMismatch,
    UploadOffsetMismatch,
    UploadUnknown,
    UploadWriteError,
)

log = get_logger("kraken.registry.uploads")

#: What a refused client is told to wait: sessions end as uploads finish, or at the TTL.
RETRY_AFTER_SECONDS = 10


@dataclass(frozen=True)
class UploadLimits:
    """Most upload sessions open at once from one client address, and in total."""

    per_client: int = 100
    total: int = 1000


DEFAULT_UPLOAD_LIMITS = UploadLimits()


class UploadSessions:
    def __init__(self, cas: CAStore, storage: RegistryStorage, ttl: float,
                 limits: UploadLimits = DEFAULT_UPLOAD_LIMITS) -> None:
        self.cas = cas
        self.storage = storage
        self.ttl = ttl
        self.limits = limits
        self._repos: dict[str, str] = {}
        self._clients: dict[str, str] = {}
        self._per_client: dict[str, int] = {}
        self._writers: dict[str, BlobWriter] = {}
        # One commit per digest at a time: the verified file sits at the digest's cache path
        # until the storage has it, so a second commit of the same digest must not replace or
        # delete it under the first.
        self._digest_locks = _KeyedLocks()

    def start(self, repo: str, client: str) -> str:
        """Open a session of ``repo`` for ``client`` (its address), within the limits."""
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if self._per_client.get(client, 0) >= self.limits.per_client:
            log.warning("upload refused: client at its session limit", client=client, limit=self.limits.per_client)
            raise RegistryError("TOOMANYREQUESTS", message="too many upload sessions open from this address",
                                detail={"limit": self.limits.per_client}, headers=retry)
        if len(self._repos) >= self.limits.total:
            log.warning("upload refused: session limit reached", limit=self.limits.total)
            raise RegistryError("UNAVAILABLE", message="too many upload sessions open",
                                detail={"limit": self.limits.total}, headers=retry)
        uid = self.cas.create_upload(hashed=not self.storage.verifies_uploads)
        self._repos[uid] = repo
        self._clients[uid] = client
        self._per_client[client] = self._per_client.get(client, 0) + 1
        return uid

    def _forget(self, uid: str) -> None:
        """The session no longer counts against any limit."""
        self._repos.pop(uid, None)
        client = self._clients.pop(uid, None)
        if client is not None:
            remaining = self._per_client[client] - 1
            if remaining:
                self._per_client[client] = remaining
            else:
                del self._per_client[client]

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
        if start in (None, 0) and self.cas.upload_size(uid) == 0 and uid not in self._writers:
            await self._start_writer(repo, uid)
        if uid in self._writers:
            chunks = self._tee(uid, chunks)
        try:
            return await self.cas.write(uid, chunks, offset=start)
        except UploadUnknown:
            await self._drop_writer(uid)
            raise _unknown(uid) from None
        except UploadOffsetMismatch as e:
            raise RegistryError(
                "RANGE_INVALID", detail=str(e),
                headers={"Range": upload_range_header(e.expected), "Docker-Upload-UUID": uid},
            ) from None
        except UploadWriteError as e:  # disk full: the store removed the upload's file
            self._repos.pop(uid, None)
            await asyncio.shield(self._drop_writer(uid))
            raise RegistryError("UNAVAILABLE", status=507, message="the registry could not store the upload; "
                                "start it again later", detail=str(e)) from None
        except BaseException:
            # The client went away mid-body: whatever it resumes with is sent at commit from
            # the local copy, so the stream (an open connection to an origin) ends now.
            await asyncio.shield(self._drop_writer(uid))
            raise

    async def _start_writer(self, repo: str, uid: str) -> None:
        try:
            writer = await self.storage.start_blob_writer(repo)
        except Exception as e:  # noqa: BLE001 - the writer is an optimisation; the upload goes on
            log.warning("could not start streaming the upload", repo=repo, upload=uid, error=f"{type(e).__name__}: {e}")
            return
        if writer is not None:
            self._writers[uid] = writer

    async def _tee(self, uid: str, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """Yield ``chunks`` to the store, passing each to the session's writer first; a writer
        that fails is dropped and the upload goes on without it."""
        async for chunk in chunks:
            writer = self._writers.get(uid)
            if writer is not None:
                try:
                    await writer.write(chunk)
                except Exception as e:  # noqa: BLE001 - see _start_writer
                    log.warning("streaming the upload failed, will send it at commit", upload=uid,
                                error=f"{type(e).__name__}: {e}")
                    await self._drop_writer(uid)
            yield chunk

    async def _drop_writer(self, uid: str) -> None:
        writer = self._writers.pop(uid, None)
        if writer is not None:
            await writer.abort()

    async def finish(self, repo: str, uid: str, digest: Digest) -> None:
        """Verify the session against ``digest`` and store the blob."""
        self.check(repo, uid)
        if self.storage.verifies_uploads:
            await self._hand_over(repo, uid, digest)
            return
        async with self._digest_locks.hold(digest):
            try:
                path = await self.cas.commit(uid, digest)
            except UploadUnknown:
                await self._drop_writer(uid)
                raise _unknown(uid) from None
            except (DigestMismatch, SizeMismatch) as e:
                await self._drop_writer(uid)
                raise RegistryError("DIGEST_INVALID", detail=str(e)) from None
            finally:
                self._forget(uid)
            try:
                await self._store(repo, uid, digest, path)
            finally:
                await asyncio.to_thread(self.cas.delete, digest)

    async def _hand_over(self, repo: str, uid: str, digest: Digest) -> None:
        """Finish for a storage that verifies: its writer (or, failing that, the upload's file,
        which never enters the cache here) goes to the storage unhashed; the storage refuses
        wrong bytes with DIGEST_INVALID before it keeps anything."""
        try:
            path = await self.cas.take_upload(uid)
        except UploadUnknown:
            await self._drop_writer(uid)
            raise _unknown(uid) from None
        finally:
            self._forget(uid)
        try:
            await self._store(repo, uid, digest, path)
        finally:
            _delete_later(path)

    async def _store(self, repo: str, uid: str, digest: Digest, path: Path) -> None:
        """The blob to the storage: the streamed copy's commit, or else the whole file sent."""
        if not await self._commit_writer(uid, digest):
            await self.storage.put_blob_from_file(repo, digest, path)

    async def _commit_writer(self, uid: str, digest: Digest) -> bool:
        writer = self._writers.pop(uid, None)
        if writer is None:
            return False
        try:
            if await writer.commit(digest):
                return True
        except RegistryError:  # the storage refused the blob (DIGEST_INVALID): no fallback
            await writer.abort()
            raise
        except Exception as e:  # noqa: BLE001 - see _start_writer
            log.warning("streamed upload could not be committed, sending it again", digest=digest,
                        error=f"{type(e).__name__}: {e}")
        await writer.abort()
        return False

    async def cancel(self, repo: str, uid: str) -> None:
        self.check(repo, uid)
        self._forget(uid)
        await self._drop_writer(uid)
        try:
            await self.cas.abort(uid)
        except UploadUnknown:
            raise _unknown(uid) from None

    async def cleanup(self) -> int:
        """Delete sessions idle for the TTL (and their files), and stray files as old."""
        removed = await asyncio.to_thread(self.cas.cleanup_uploads, self.ttl)
        for uid in [u for u in self._repos if not self.cas.has_upload(u)]:
            self._forget(uid)
            await self._drop_writer(uid)
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


def _delete_later(path: Path) -> None:
    """Delete a handed-over upload's file in a worker thread without making the client wait:
    unlinking a large file frees its blocks and cached pages (about 25 ms per 200 MiB here).
    Its name is the session's own; a restart clears whatever is left (kraken.proxy.server)."""
    def done(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.warning("could not delete a finished upload", path=str(path), error=str(future.exception()))

    asyncio.get_running_loop().run_in_executor(None, partial(path.unlink, missing_ok=True)).add_done_callback(done)


def _unknown(uid: str) -> RegistryError:
    return RegistryError("BLOB_UPLOAD_UNKNOWN", detail={"uuid": uid})
