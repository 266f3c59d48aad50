"""Where a registry keeps blobs, manifests and tags: the one interface the routes call.

The proxy implements it over origins and build-index; the agent over its P2P cache. Write
methods default to UNSUPPORTED so a read-only storage implements only reads. Manifests are
blobs (content-addressed by their digest); the interface keeps ``open_manifest`` separate
because a manifest is parsed whole (its media type) before it is served, and a blob is sent
by its size only.
"""
from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from kraken.core.digest import Digest
from kraken.http.files import write_file
from kraken.registry.errors import RegistryError
from kraken.registry.ranges import ByteRange
from kraken.registry.referrer_index import ReferrerDescriptor

# Small: a chunk waits in memory until the client takes it (when iterated, not sent).
READ_CHUNK = 64 << 10


class BlobReader(ABC):
    """An open blob body. The route sends it (:meth:`send`) at most once and always calls
    :meth:`aclose` (also when the client goes away), so upstream connections and files are
    released."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    async def send(self, request: web.Request, response: web.StreamResponse) -> None:
        """Write the bytes as the body of the prepared ``response`` (a file reader sends its
        file with ``sendfile`` instead of reading it through this process)."""
        async for chunk in self:
            await response.write(chunk)


class StreamBlobReader(BlobReader):
    """Chunks from an async iterator (e.g. an upstream response) plus what releases it."""

    def __init__(
        self, chunks: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._chunks = chunks
        self._on_close = on_close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            await on_close()


class FileBlobReader(BlobReader):
    """A local file (or a range of it). :meth:`send` uses ``sendfile`` (kraken.http.files),
    so a client reading slowly holds no copy of the blob in memory; iterating it reads
    small chunks in a worker thread, so the loop never blocks."""

    def __init__(self, path: Path, byte_range: ByteRange | None = None, chunk_size: int = READ_CHUNK) -> None:
        self._path = path
        self._range = byte_range
        self._chunk_size = chunk_size
        self._file: BinaryIO | None = None

    async def _open(self) -> tuple[BinaryIO, int, int]:
        """The open file, the offset and the byte count to send."""
        f = self._file = await asyncio.to_thread(open, self._path, "rb")
        if self._range is not None:
            return f, self._range.start, self._range.length
        return f, 0, os.fstat(f.fileno()).st_size

    async def _chunks(self) -> AsyncIterator[bytes]:
        f, offset, remaining = await self._open()
        while remaining > 0:
            chunk = await asyncio.to_thread(os.pread, f.fileno(), min(self._chunk_size, remaining), offset)
            if not chunk:
                break
            offset += len(chunk)
            remaining -= len(chunk)
            yield chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def send(self, request: web.Request, response: web.StreamResponse) -> None:
        f, offset, count = await self._open()
        await write_file(request, response, f, offset, count)

    async def aclose(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            await asyncio.to_thread(f.close)


class BlobWriter(ABC):
    """Receives an upload's bytes while they arrive, so the storage may already hold the blob
    when the client commits it (the proxy streams them on to an origin). Best effort: the
    sessions stage every upload locally anyway and fall back to
    :meth:`RegistryStorage.put_blob_from_file` whenever a writer fails or declines."""

    @abstractmethod
    async def write(self, chunk: bytes) -> None:
        """Take the next chunk; raise to give up (the upload itself goes on)."""

    @abstractmethod
    async def commit(self, digest: Digest) -> bool:
        """Store the bytes written as the blob ``digest`` (verified already, or by the storage
        when it :attr:`~RegistryStorage.verifies_uploads`); False (or an exception other than
        a :class:`RegistryError`) sends the caller to its fallback."""

    @abstractmethod
    async def abort(self) -> None:
        """Drop what was written."""


class RegistryStorage(ABC):
    """Blobs, manifests and tags of repositories. ``repo`` is always a validated name.

    Reads return ``None`` for "not there". An upstream failure propagates as an exception:
    ``aiohttp.ClientError``, ``TimeoutError``, ``ConnectionError`` and a 5xx ``HTTPStatusError``
    become ``UNAVAILABLE`` (503), which clients retry; a :class:`RegistryError` is sent as is.
    """

    #: True when the storage checks every uploaded blob against its digest before it keeps
    #: it (:meth:`put_blob_from_file` and a :class:`BlobWriter`'s commit raise DIGEST_INVALID
    #: for wrong bytes): the upload sessions then hand over their bytes unhashed instead of
    #: hashing every byte a second time.
    verifies_uploads = False

    # ---- reads (every storage) -------------------------------------------------------------

    @abstractmethod
    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        """The manifest digest a tag points to."""

    @abstractmethod
    async def list_tags(self, repo: str) -> list[str]:
        """Every tag of ``repo``, sorted; empty when the repository is unknown."""

    async def catalog(self) -> list[str]:
        """Every repository name, sorted."""
        raise RegistryError("UNSUPPORTED", message="catalog is not supported here")

    @abstractmethod
    async def stat_blob(self, repo: str, digest: Digest) -> int | None:
        """The blob's size. Called once per blob request, before :meth:`open_blob`."""

    @abstractmethod
    async def open_blob(self, repo: str, digest: Digest, byte_range: ByteRange | None) -> BlobReader | None:
        """The blob's bytes (only ``byte_range`` when given), streamed; never read whole."""

    @abstractmethod
    async def open_manifest(self, repo: str, digest: Digest, max_size: int) -> BinaryIO | None:
        """A manifest's bytes as an open local file, already checked against ``digest`` (a
        verified read, e.g. :meth:`kraken.store.cas.CAStore.verified_path`), which the caller
        closes (the routes parse and stream it, so a manifest is never held whole per
        client); ``None`` also for a blob bigger than ``max_size``, so asking for a layer by
        its digest as a manifest never fetches it. Open in a worker thread: opening a file
        may block."""

    async def referrers(self, repo: str, subject: Digest) -> list[ReferrerDescriptor]:
        """The referrers of manifest ``subject`` (``[]`` when none, also for an unknown subject).
        The default is a 404, which is how the spec tells clients the API is unavailable."""
        raise RegistryError("UNSUPPORTED", status=404, message="the referrers API is not available here")

    # ---- writes (read-write storages override) ---------------------------------------------

    async def put_blob_from_file(self, repo: str, digest: Digest, path: Path) -> None:
        """Store a verified blob (or verify it, see :attr:`verifies_uploads`). ``path`` belongs
        to the caller and is deleted after the call, so the storage must copy (or stream) it
        before returning."""
        raise _read_only()

    async def start_blob_writer(self, repo: str) -> BlobWriter | None:
        """A writer to receive an upload to ``repo`` as it arrives; None to take blobs only
        whole, at commit, through :meth:`put_blob_from_file`."""
        return None

    async def put_blob_bytes(self, repo: str, digest: Digest, data: bytes) -> None:
        """Store a small verified blob (a manifest)."""
        raise _read_only()

    async def check_tags_writable(self) -> None:  # noqa: B027 - a default that checks nothing
        """Raise (e.g. a connection error: UNAVAILABLE) when a tag could not be written now, so
        a push by tag is refused before its manifest is stored."""

    async def put_tag(self, repo: str, tag: str, digest: Digest) -> None:
        """Point ``tag`` at manifest ``digest``; raise MANIFEST_BLOB_UNKNOWN if the storage finds
        references missing."""
        raise _read_only()

    async def mount_blob(self, from_repo: str, to_repo: str, digest: Digest) -> bool:
        """Make a blob of ``from_repo`` available in ``to_repo``; False when it cannot."""
        return False

    async def add_referrer(self, repo: str, subject: Digest, descriptor: ReferrerDescriptor) -> bool:
        """Record stored manifest ``descriptor.digest`` as a referrer of ``subject``; False when
        this storage keeps no referrers (the push then answers without ``OCI-Subject``)."""
        return False


def _read_only() -> RegistryError:
    return RegistryError("UNSUPPORTED", message="this registry is read-only")
