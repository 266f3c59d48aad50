"""The ``gcs`` backend: objects in a Google Cloud Storage bucket, through google-cloud-storage.

The config keys are Kraken's (``bucket``, ``root_directory``, ``name_path``, ``username``,
``upload_chunk_size`` or Kraken's YAML spelling ``upload_part_size``, ``list_max_keys``), plus
``endpoint`` for emulators and private endpoints; credentials are decided at start
(:mod:`kraken.backend.gcs_auth`).

google-cloud-storage blocks (requests underneath), so every call runs on one of this backend's
own thread pools (:mod:`kraken.backend.blocking`): transfers on ``concurrency`` threads, stats
and listings on a few of their own, so a readiness probe never queues behind blobs moving. The
event loop never waits on the network or a file, at most ``concurrency`` transfers run at once
(more queue), and the component's other worker threads (CAS file I/O) are never starved by slow
transfers. Files are streamed: an upload holds at most one
``upload_chunk_size`` chunk in memory (the resumable-upload protocol sends the file in such
chunks; files up to 8 MiB go in one request), a download is written to a temporary file beside
the destination as it arrives and renamed over it when complete and checksummed.

Every request has a timeout and the library's retries stop after ``retry_deadline``, so a dead
endpoint surfaces as :class:`BackendError` instead of a hang; a missing object is
:class:`BackendNotFound`. Messages name the backend and the bucket, never a credential.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import requests
from google.api_core.exceptions import GoogleAPIError, NotFound
from google.api_core.retry import Retry
from google.auth.exceptions import GoogleAuthError
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY

from kraken.backend.base import MAX_IN_MEMORY, Backend, BackendContext, BackendError, BackendNotFound, BlobInfo
from kraken.backend.blocking import METADATA_WORKERS, BlockingPool
from kraken.backend.gcs_auth import resolve_credentials
from kraken.backend.gcsconfig import GcsBackendConfig
from kraken.backend.namepath import ObjectLayout
from kraken.core.digest import Digest, hash_file, new_hasher
from kraken.core.hashthread import ThreadedHasher
from kraken.log import get_logger
from kraken.store.flush import ThreadFlush

log = get_logger("kraken.backend.gcs")

#: How the emulator endpoint is given to every Google client library.
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


class _Stopped(BackendError):
    """Raised inside a worker thread whose caller was cancelled or whose backend was closed."""


class _Guarded:
    """A file the library reads or writes through, which fails once ``stop`` is set, so a
    transfer whose caller gave up ends at its next chunk instead of running to the end.

    Written to (a download), it also starts flushing the file to disk as it grows
    (``flush``), and, with a ``hasher``, hashes the bytes on their way to the file, on a thread
    of its own, as long as they are written in order from the start: a seek anywhere but the
    end of what was written (never seen from the library, which resumes a retried download
    where it stopped) makes :attr:`in_order` False, and the caller must hash the file instead."""

    def __init__(self, file: IO[bytes], stop: threading.Event, hasher: ThreadedHasher | None = None,
                 flush: ThreadFlush | None = None) -> None:
        self._file = file
        self._stop = stop
        self.hasher = hasher
        self._flush = flush
        self.in_order = True
        self._written = 0

    def _check(self) -> None:
        if self._stop.is_set():
            raise _Stopped("gcs backend: transfer stopped (cancelled or closed)")

    def read(self, size: int = -1) -> bytes:
        self._check()
        return self._file.read(size)

    def write(self, data: bytes) -> int:
        self._check()
        written = self._file.write(data)
        if self._flush is not None:
            self._flush.written(written)
        if self.hasher is not None and self.in_order:
            self.hasher.update(memoryview(data)[:written])
            self._written += written
        return written

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        if position != self._written:
            self.in_order = False
        return position

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()


class GcsBackend(Backend):
    """Objects under ``root_directory`` of one bucket; the namespace is not part of the path."""

    def __init__(self, config: GcsBackendConfig, context: BackendContext) -> None:
        self.what = f"gcs backend (bucket {config.bucket})"
        self.layout = ObjectLayout(config.root_directory, config.name_path)
        self.chunk_size = config.chunk_size
        self.list_max_keys = config.list_max_keys
        self.timeout = (config.timeout, config.timeout)
        self.retry: Retry = DEFAULT_RETRY.with_timeout(config.retry_deadline)
        endpoint = (config.endpoint or os.environ.get(EMULATOR_ENV, "")).rstrip("/")
        credentials, source = resolve_credentials(self.what, config.username, endpoint, context.credentials)
        self.session = AuthorizedSession(credentials, refresh_timeout=config.timeout)
        # requests keeps 10 connections per host; one per worker thread instead.
        adapter = requests.adapters.HTTPAdapter(pool_connections=1,
                                                pool_maxsize=config.concurrency + METADATA_WORKERS)
        for prefix in list(self.session.adapters):
            self.session.mount(prefix, adapter)
        options = {"api_endpoint": endpoint} if endpoint else None
        self.client = storage.Client(project=None, credentials=credentials, _http=self.session,
                                     client_options=options)
        # The library (3.x) otherwise starts a thread per bucket, outside this pool, to read
        # the bucket's metadata for its traces: an unbounded thread and a storage.buckets.get
        # permission this backend neither needs nor asks for.
        self.client._bucket_metadata_cache = None
        self.bucket = self.client.bucket(config.bucket)
        self._transfers = BlockingPool(config.concurrency, f"gcs-{config.bucket}")
        self._metadata = BlockingPool(METADATA_WORKERS, f"gcs-meta-{config.bucket}")
        log.info("gcs backend ready", bucket=config.bucket, endpoint=endpoint or "storage.googleapis.com",
                 credentials=source, root=self.layout.root, name_path=config.name_path)

    # ---- errors in the backend's terms ----------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, op: str, name: str, namespace: str = "") -> Iterator[None]:
        """Library failures in the backend's terms. A 404 on a read is a missing object; on a
        write or a listing only the bucket can be missing, which is a failure, not absence."""
        what = f"{op} {name}" + (f" (namespace {namespace})" if namespace else "")
        try:
            yield
        except NotFound as e:
            if op in ("upload", "list"):
                raise BackendError(f"{self.what}: {what}: bucket not found ({e})") from e
            raise BackendNotFound(f"{name}: not found in {self.what}") from None
        except _Stopped:
            raise
        except (GoogleAPIError, GoogleAuthError, requests.RequestException, DataCorruption, InvalidResponse,
                OSError, ValueError) as e:
            raise BackendError(f"{self.what}: {what}: {type(e).__name__}: {e}") from e

    # ---- the Backend interface -------------------------------------------------------------

    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        path = self.layout.path(name)

        def stat(_: threading.Event) -> BlobInfo | None:
            with self._errors("stat", name, namespace):
                blob = self.bucket.get_blob(path, timeout=self.timeout, retry=self.retry)
            return None if blob is None else BlobInfo(int(blob.size or 0))

        return await self._metadata.call_stoppable(stat)

    async def upload(self, namespace: str, name: str, src: Path) -> None:
        path = self.layout.path(name)

        def upload(stop: threading.Event) -> None:
            with open(src, "rb") as f:  # a missing src is the caller's error, raised as is
                size = os.fstat(f.fileno()).st_size
                blob = self.bucket.blob(path, chunk_size=self.chunk_size)
                with self._errors("upload", name, namespace):
                    blob.upload_from_file(_Guarded(f, stop), size=size, timeout=self.timeout, retry=self.retry)

        await self._transfers.call_stoppable(upload)

    async def upload_bytes(self, namespace: str, name: str, data: bytes) -> None:
        path = self.layout.path(name)

        def upload(_: threading.Event) -> None:
            blob = self.bucket.blob(path, chunk_size=self.chunk_size)
            with self._errors("upload", name, namespace):
                blob.upload_from_string(data, timeout=self.timeout, retry=self.retry)

        await self._transfers.call_stoppable(upload)

    async def download(self, namespace: str, name: str, dst: Path) -> None:
        """Streamed into a temporary file beside ``dst``, renamed over it once complete (not
        fsynced: callers import the file into the CAS, which makes it durable)."""
        await self._download(namespace, name, dst, None)

    async def download_hashed(self, namespace: str, name: str, dst: Path, algorithm: str = "sha256") -> Digest:
        """The object arrives in order, so it is hashed as it is written to the file, on a
        thread beside the download (:mod:`kraken.core.hashthread`): the origin's check of a
        fetched blob then costs no second pass over 1 GiB, and little time of its own."""
        hasher = ThreadedHasher(new_hasher(algorithm))
        try:
            in_order = await self._download(namespace, name, dst, hasher)
            hexdigest = await asyncio.to_thread(hasher.hexdigest)
        finally:
            await asyncio.to_thread(hasher.close)
        return Digest(algorithm, hexdigest) if in_order else await hash_file(dst, algorithm)

    async def _download(self, namespace: str, name: str, dst: Path, hasher: ThreadedHasher | None) -> bool:
        """Download to ``dst``; True if ``hasher`` saw every byte of the file, in order. The
        file is flushed to disk while it arrives (:class:`~kraken.store.flush.ThreadFlush`), so
        the fsync that makes the caller's copy durable finds little left to write."""
        path = self.layout.path(name)

        def download(stop: threading.Event) -> bool:
            fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name[:64]}.", suffix=".gcs-tmp")
            flush = ThreadFlush(Path(tmp))
            try:
                with open(fd, "wb", buffering=1 << 20) as f, self._errors("download", name, namespace):
                    guarded = _Guarded(f, stop, hasher, flush)
                    self.bucket.blob(path).download_to_file(guarded, timeout=self.timeout, retry=self.retry)
                flush.wait()
                os.replace(tmp, dst)
            except BaseException:
                flush.wait()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return guarded.in_order

        return await self._transfers.call_stoppable(download, wait_on_cancel=True)

    async def download_bytes(self, namespace: str, name: str) -> bytes:
        path = self.layout.path(name)

        def download(_: threading.Event) -> bytes:
            with self._errors("download", name, namespace):
                data: bytes = self.bucket.blob(path).download_as_bytes(
                    end=MAX_IN_MEMORY, timeout=self.timeout, retry=self.retry)  # end is inclusive
            if len(data) > MAX_IN_MEMORY:
                raise BackendError(f"{path}: larger than {MAX_IN_MEMORY} bytes, refused in memory")
            return data

        return await self._transfers.call_stoppable(download)

    async def list(self, prefix: str) -> list[str]:
        """Every object under the layout's directory for ``prefix``, read ``list_max_keys`` a
        page, mapped back to names."""
        directory = self.layout.list_dir(prefix)
        if directory is None:
            return []

        def list_paths(stop: threading.Event) -> list[str]:
            paths: list[str] = []
            with self._errors("list", prefix):
                pages = self.client.list_blobs(
                    self.bucket, prefix=f"{directory}/" if directory else None, page_size=self.list_max_keys,
                    fields="items(name),nextPageToken", timeout=self.timeout, retry=self.retry).pages
                for page in pages:
                    if stop.is_set():
                        raise _Stopped(f"{self.what}: stopped (cancelled or closed)")
                    paths.extend(blob.name for blob in page)
            return paths

        return self.layout.names(await self._metadata.call_stoppable(list_paths), prefix)

    async def close(self) -> None:
        """Stop running transfers at their next chunk, drop queued calls, wait for the
        threads, then close the connections."""
        await asyncio.gather(self._transfers.close(), self._metadata.close())
        await asyncio.to_thread(self.session.close)
