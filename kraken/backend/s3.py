"""The ``s3`` backend: objects in an S3 bucket (boto3), under ``root_directory`` in ``name_path`` layout.

boto3 blocks, so every S3 request runs in one of the backend's own thread pools
(:mod:`kraken.backend.blocking`): transfers on ``upload_concurrency + download_concurrency``
workers, stats and listings on a few of their own, so a readiness probe never queues behind
transfers (as many pooled connections as threads). The event loop never waits on S3, and one
backend never has more requests in flight than that, however many transfers the origin runs.
A file larger than ``upload_part_size`` is uploaded as a multipart upload,
``upload_concurrency`` parts at a time, each part streamed from the file; an object larger than
``download_part_size`` is downloaded as parallel ranged GETs, each streamed straight to its
offset in a temporary file beside the destination, which then replaces the destination. Every
range asks for the ETag the first HEAD saw, so an object overwritten meanwhile fails the
download (retry later) instead of mixing two versions. The client itself is made in the
constructor, on the loop, once at start (botocore loads its S3 model: about 0.1 s before the
component serves anything).

Failures are reported in the backend's terms: a missing object is :class:`BackendNotFound`
(``stat`` answers None); anything else (connection refused, a timeout, throttling, 5xx, bad
credentials, a missing bucket) is :class:`BackendError`, naming the bucket, the operation and
the namespace. A HEAD cannot tell a missing bucket from a missing key (404 without a body), so
``stat`` in a missing bucket answers None; uploads to it fail with ``NoSuchBucket``.
"""
from __future__ import annotations

import asyncio
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from kraken.backend.base import MAX_IN_MEMORY, Backend, BackendContext, BackendError, BackendNotFound, BlobInfo
from kraken.backend.blocking import METADATA_WORKERS, BlockingPool
from kraken.backend.s3config import S3BackendConfig, make_client, static_credentials
from kraken.backend.s3transfer import FileSlice, part_ranges, write_body
from kraken.core.digest import Digest, new_hasher
from kraken.core.hashthread import RangeHasher
from kraken.log import get_logger

log = get_logger("kraken.backend.s3")

#: Error codes that mean "no such object" (HEAD answers a bare 404).
_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
#: What a HEAD's bare 403 (no body, so no error code) almost always means, said in the error.
_HEAD_DENIED = ("access denied; a HEAD's 403 gives no reason: a wrong key id or secret, or a policy without "
                "s3:GetObject on the objects or s3:ListBucket on the bucket")
#: S3 accepts at most this many parts in one multipart upload.
MAX_PARTS = 10_000
#: The checksum every upload request carries, as boto3's ``upload_file`` sends it: S3 checks
#: each part against it on receipt. Named explicitly because botocore, left to choose, signs
#: each part's payload instead (on a plain-HTTP endpoint), which made a 1 GiB upload 1.6 times
#: slower than ``upload_file`` against the same server (docs/BENCHMARKS.md).
CHECKSUM = "CRC32"


class _Missing(Exception):
    """Raised inside the backend when S3 says the object does not exist."""


class S3Backend(Backend):
    """One bucket; the namespace is not part of the key (routing picks the bucket and root)."""

    def __init__(self, config: S3BackendConfig, context: BackendContext) -> None:
        self.config = config
        self.bucket = config.bucket
        self.layout = config.layout()
        self.where = config.endpoint or f"AWS {config.region}"
        static = static_credentials(config, context.credentials)
        if config.username and static is None:
            log.warning("no auth: s3 set for username; using boto3's default credential chain",
                        bucket=config.bucket, username=config.username)
        workers = config.upload_concurrency + config.download_concurrency
        self.client = make_client(config, static, context.http_client, workers + METADATA_WORKERS)
        self._transfers = BlockingPool(workers, f"s3-{config.bucket}")
        self._metadata = BlockingPool(METADATA_WORKERS, f"s3-meta-{config.bucket}")
        log.info("s3 backend", bucket=config.bucket, endpoint=self.where, root=self.layout.root or "/",
                 credentials=f"auth set {config.username}" if static else "default chain")

    @contextmanager
    def _errors(self, op: str, namespace: str, name: str) -> Iterator[None]:
        of = f" of namespace {namespace!r}" if namespace else ""
        what = f"s3 backend (bucket {self.bucket!r} at {self.where}): {op} {name!r}{of}"
        try:
            yield
        except _Missing:
            raise BackendNotFound(f"{name}: not found in s3 bucket {self.bucket!r}") from None
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise BackendNotFound(f"{name}: not found in s3 bucket {self.bucket!r}") from None
            if _code(e) == "403":
                raise BackendError(f"{what}: {_HEAD_DENIED}: {e}") from e
            raise BackendError(f"{what}: {e}") from e
        except (BotoCoreError, Urllib3Error, ConnectionError) as e:
            raise BackendError(f"{what}: {e}") from e

    # ---- blocking requests (worker threads) ---------------------------------------------

    def _head(self, key: str) -> tuple[int, str]:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise _Missing from None
            raise
        return head["ContentLength"], head["ETag"]

    def _put_file(self, key: str, src: Path, size: int) -> None:
        with FileSlice(src, 0, size) as body:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                                   ChecksumAlgorithm=CHECKSUM)

    def _upload_part(self, key: str, upload_id: str, number: int, src: Path, start: int,
                     length: int) -> dict[str, object]:
        """One part; what ``complete_multipart_upload`` must be given about it."""
        with FileSlice(src, start, length) as body:
            part = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                           Body=body, ContentLength=length, ChecksumAlgorithm=CHECKSUM)
        done: dict[str, object] = {"PartNumber": number, "ETag": part["ETag"]}
        if f"Checksum{CHECKSUM}" in part:
            done[f"Checksum{CHECKSUM}"] = part[f"Checksum{CHECKSUM}"]
        return done

    def _get_range(self, key: str, etag: str, start: int, length: int, whole: bool, path: Path,
                   on_done: Callable[[int, int], None] | None) -> None:
        kwargs = {} if whole else {"Range": f"bytes={start}-{start + length - 1}"}
        response = self.client.get_object(Bucket=self.bucket, Key=key, IfMatch=etag, **kwargs)
        write_body(response["Body"], path, start, length)
        if on_done is not None:
            on_done(start, length)

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[str], str | None]:
        kwargs = {"ContinuationToken": token} if token else {}
        page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=self.config.list_max_keys,
                                           **kwargs)
        keys = [obj["Key"] for obj in page.get("Contents", [])]
        return keys, page.get("NextContinuationToken") if page.get("IsTruncated") else None

    # ---- the interface --------------------------------------------------------------------

    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        key = self.layout.path(name)
        try:
            with self._errors("stat", namespace, name):
                size, _ = await self._metadata.call(self._head, key)
        except BackendNotFound:
            return None
        return BlobInfo(size)

    async def upload(self, namespace: str, name: str, src: Path) -> None:
        key = self.layout.path(name)
        size = (await asyncio.to_thread(os.stat, src)).st_size  # a missing src is the caller's error
        with self._errors("upload", namespace, name):
            if size <= self.config.upload_part_size:
                await self._transfers.call(self._put_file, key, src, size)
            else:
                await self._upload_multipart(key, src, size)

    async def _upload_multipart(self, key: str, src: Path, size: int) -> None:
        part_size = max(self.config.upload_part_size, math.ceil(size / MAX_PARTS))
        created = await self._transfers.call(self.client.create_multipart_upload, Bucket=self.bucket, Key=key,
                                             ChecksumAlgorithm=CHECKSUM)
        upload_id = created["UploadId"]
        try:
            jobs = [partial(self._upload_part, key, upload_id, number, src, start, length)
                    for number, (start, length) in enumerate(part_ranges(size, part_size), 1)]
            parts = await self._transfers.run_bounded(jobs, self.config.upload_concurrency)
            await self._transfers.call(self.client.complete_multipart_upload, Bucket=self.bucket, Key=key,
                             UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            await self._abort(key, upload_id)
            raise

    async def _abort(self, key: str, upload_id: str) -> None:
        """Drop a failed upload's parts (best effort: a bucket lifecycle rule catches the rest)."""
        try:
            await self._transfers.call(self.client.abort_multipart_upload, Bucket=self.bucket, Key=key,
                                       UploadId=upload_id)
        except (ClientError, BotoCoreError, Urllib3Error, ConnectionError) as e:
            log.warning("aborting a multipart upload failed", bucket=self.bucket, key=key, error=str(e))

    async def upload_bytes(self, namespace: str, name: str, data: bytes) -> None:
        key = self.layout.path(name)
        with self._errors("upload", namespace, name):
            await self._transfers.call(self.client.put_object, Bucket=self.bucket, Key=key, Body=data,
                                       ChecksumAlgorithm=CHECKSUM)

    async def download(self, namespace: str, name: str, dst: Path) -> None:
        await self._download(namespace, name, dst, None)

    async def download_hashed(self, namespace: str, name: str, dst: Path, algorithm: str = "sha256") -> Digest:
        """Ranges land out of order, in parallel: a thread hashes the file's complete prefix as
        it grows (:class:`~kraken.core.hashthread.RangeHasher`), so the origin's check of a
        fetched blob ends just after its last range instead of a whole pass later."""
        digest = await self._download(namespace, name, dst, algorithm)
        assert digest is not None
        return digest

    async def _download(self, namespace: str, name: str, dst: Path, algorithm: str | None) -> Digest | None:
        """Parallel ranges into a temporary file beside ``dst``, renamed over it when all are
        in; with an ``algorithm``, the digest of the file, hashed as the ranges land."""
        key = self.layout.path(name)
        with self._errors("download", namespace, name):
            size, etag = await self._transfers.call(self._head, key)
            tmp = await asyncio.to_thread(_temp_beside, dst, size)
            hasher = RangeHasher(tmp, size, new_hasher(algorithm)) if algorithm else None
            try:
                on_done = hasher.range_done if hasher else None
                ranges = part_ranges(size, self.config.download_part_size)
                jobs = [partial(self._get_range, key, etag, start, length, len(ranges) == 1, tmp, on_done)
                        for start, length in ranges]
                await self._transfers.run_bounded(jobs, self.config.download_concurrency)
                digest = Digest(algorithm, await asyncio.to_thread(hasher.hexdigest)) if algorithm and hasher else None
                await asyncio.to_thread(os.replace, tmp, dst)
                return digest
            except BaseException:
                await asyncio.to_thread(tmp.unlink, True)
                raise
            finally:
                if hasher is not None:
                    await asyncio.to_thread(hasher.close)

    async def download_bytes(self, namespace: str, name: str) -> bytes:
        key = self.layout.path(name)
        with self._errors("download", namespace, name):
            return await self._transfers.call(self._get_bytes, key)

    def _get_bytes(self, key: str) -> bytes:
        data = bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read(MAX_IN_MEMORY + 1))
        if len(data) > MAX_IN_MEMORY:
            raise BackendError(f"{key}: larger than {MAX_IN_MEMORY} bytes, refused in memory")
        return data

    async def list(self, prefix: str) -> list[str]:
        directory = self.layout.list_dir(prefix)
        if directory is None:
            return []
        key_prefix = directory + "/" if directory else ""
        keys: list[str] = []
        token: str | None = None
        with self._errors("list", "", prefix):
            while True:
                page, token = await self._metadata.call(self._list_page, key_prefix, token)
                keys.extend(page)
                if token is None:
                    break
        return self.layout.names(keys, prefix)

    async def close(self) -> None:
        """Stop taking requests; requests still running finish in their threads."""
        await self._transfers.close(wait=False)
        await self._metadata.close(wait=False)
        self.client.close()


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _temp_beside(dst: Path, size: int) -> Path:
    """An empty file of ``size`` bytes in ``dst``'s directory, for ranges to be written into."""
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".s3")
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return Path(name)
