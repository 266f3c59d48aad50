"""The proxy's registry storage: blobs and manifests on the origins, tags in build-index.

Blobs go to the origin that owns their digest on the hash ring, under the repository name as
namespace (the origin writes them back to the backend chosen for that namespace). Manifests
are blobs too. Tags are ``repo:tag`` in build-index, which re-checks that every reference is on
the origins before it stores one. Blob bytes are streamed both ways, never held whole.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
from aiohttp import web
from prometheus_client import Counter

from kraken.buildindex.client import BuildIndexClient, ReferrerRefused, TagReferenceError, failover_counter
from kraken.buildindex.hosts import BuildIndexHostsConfig
from kraken.core.digest import Digest
from kraken.http.client import HttpClient, create_client
from kraken.http.config import HttpClientConfig, TLSConfig
from kraken.http.health import check_any
from kraken.http.healthcheck import RingMetrics
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import BlobNotFound, OriginCluster
from kraken.origin.stream import DigestRefused, UploadStream
from kraken.proxy.manifest_cache import ManifestCache, ManifestMissing
from kraken.registry.errors import RegistryError
from kraken.registry.ranges import ByteRange
from kraken.registry.referrer_index import ReferrerDescriptor
from kraken.registry.storage import BlobReader, BlobWriter, RegistryStorage, StreamBlobReader
from kraken.ring import RingConfig
from kraken.store.cas import DigestMismatch
from kraken.store.verify import verified

log = get_logger("proxy")

#: Relay chunk of a blob read from an origin. Small on purpose: a client that reads slowly
#: keeps about this much (plus the held-back chunk and aiohttp's 64 KiB buffers) in this
#: process's memory, so 200 stalled readers cost tens of MiB, not hundreds.
STREAM_CHUNK = 64 << 10
MANIFEST_CHUNK = 64 << 10

#: How a blob reached its origin (the ``path`` label of ``kraken_proxy_blobs_uploaded_total``):
#: committed on the origin the client's bytes were streamed to while they arrived, or sent whole
#: to the ring owner at commit (no stream, a broken one, or one to an origin that does not own
#: the digest; manifests always). Their ratio shows how often the stream saved a second transfer.
STREAMED = "streamed"
SENT_AT_COMMIT = "sent_at_commit"


class ProxyMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.build_index_failovers: Counter = failover_counter(metrics)
        self.bytes_uploaded: Counter = metrics.counter(
            "kraken_proxy_blob_bytes_uploaded_total", "Blob bytes pushed to the origins")
        self.blobs_uploaded: Counter = metrics.counter(
            "kraken_proxy_blobs_uploaded_total",
            "Blobs (layers, configs, manifests) pushed to the origins, by path (streamed, sent_at_commit)",
            ["path"])
        for path in (STREAMED, SENT_AT_COMMIT):
            self.blobs_uploaded.labels(path)  # both series exist from the start, at 0
        self.bytes_downloaded: Counter = metrics.counter(
            "kraken_proxy_blob_bytes_downloaded_total", "Blob bytes served to clients from the origins")
        self.tags_pushed: Counter = metrics.counter(
            "kraken_proxy_tags_pushed_total", "Tags put to build-index")
        self.mounts: Counter = metrics.counter(
            "kraken_proxy_blob_mounts_total", "Cross-repository mount requests by result", ["result"])
        self.digest_mismatches: Counter = metrics.counter(
            "kraken_proxy_blob_digest_mismatches_total",
            "Whole blobs read from an origin whose bytes failed their digest (the response was cut short)")
        self.ring = RingMetrics(metrics)


@dataclass
class _Running:
    """What exists only while the proxy runs (opened in :meth:`ProxyStorage.lifecycle`)."""

    http: HttpClient
    origins: OriginCluster
    build_index: BuildIndexClient


class ProxyStorage(RegistryStorage):
    """Made from the config when the app is built (no I/O); :meth:`lifecycle`, the app's
    cleanup context, loads the manifest cache and opens the clients (they need a running loop)
    and closes them.

    Uploads reach it unhashed (:attr:`verifies_uploads`): the origin that commits a blob
    checks it against its digest first (``CAStore.commit``, also when it has the blob
    already) and answers 400 otherwise, which becomes DIGEST_INVALID here. So each pushed
    byte is hashed once, by the origin that keeps it, not once more by the proxy."""

    verifies_uploads = True

    def __init__(self, origins: RingConfig, build_index: BuildIndexHostsConfig, metrics: ProxyMetrics,
                 manifests: ManifestCache, http_config: HttpClientConfig, tls: TLSConfig | None = None) -> None:
        self._origins_config = origins
        self._http_config = http_config
        self._tls = tls
        self.manifests = manifests
        self._build_index = build_index
        self.metrics = metrics
        self._running: _Running | None = None

    async def lifecycle(self, _: web.Application) -> AsyncIterator[None]:
        """Each close is registered as soon as its resource exists, so a failed start closes what
        already started."""
        async with AsyncExitStack() as stack:
            await self.manifests.start()
            http = create_client(self._http_config, self._tls)
            stack.push_async_callback(http.close)
            origins = OriginCluster(self._origins_config, http, metrics=self.metrics.ring)
            origins.start()
            stack.push_async_callback(origins.close)
            self._running = _Running(http, origins, BuildIndexClient(self._build_index, http,
                                                                     self.metrics.build_index_failovers))
            stack.callback(setattr, self, "_running", None)
            yield

    @property
    def running(self) -> _Running:
        if self._running is None:
            raise RuntimeError("proxy not started")
        return self._running

    @property
    def http(self) -> HttpClient:
        return self.running.http

    @property
    def origins(self) -> OriginCluster:
        return self.running.origins

    @property
    def build_index(self) -> BuildIndexClient:
        return self.running.build_index

    async def readiness(self) -> None:
        """Ready when build-index and at least one origin answer (the ring routes around the rest)."""
        await self.build_index.ping()
        await check_any(self.http, self._origins_config.hosts, "origin")

    # ---- tags ------------------------------------------------------------------------------

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        return await self.build_index.get_tag(f"{repo}:{tag}")

    async def list_tags(self, repo: str) -> list[str]:
        return sorted(await self.build_index.list_repository(repo))

    async def catalog(self) -> list[str]:
        """Repositories are not stored anywhere by themselves: they are the repos of the tags."""
        return sorted({name.rpartition(":")[0] for name in await self.build_index.list_prefix("")})

    async def check_tags_writable(self) -> None:
        """build-index answers: asked before a tagged manifest is stored, so a push refused
        with 503 while build-index is down stores nothing. (build-index failing between this
        check and the tag PUT still leaves the manifest stored, untagged.)"""
        await self.build_index.ping(timeout=self._http_config.read_timeout)

    async def put_tag(self, repo: str, tag: str, digest: Digest) -> None:
        try:
            await self.build_index.put_tag(f"{repo}:{tag}", digest, replicate=True)
        except TagReferenceError as e:
            if not e.missing:
                raise RegistryError("MANIFEST_INVALID", detail=str(e)) from None
            raise RegistryError.combine(
                RegistryError("MANIFEST_BLOB_UNKNOWN", detail={"digest": str(d)}) for d in e.missing
            ) from None
        self.metrics.tags_pushed.inc()
        log.info("tag pushed", repo=repo, tag=tag, digest=digest)

    # ---- referrers -------------------------------------------------------------------------

    async def referrers(self, repo: str, subject: Digest) -> list[ReferrerDescriptor]:
        return await self.build_index.list_referrers(repo, subject)

    async def add_referrer(self, repo: str, subject: Digest, descriptor: ReferrerDescriptor) -> bool:
        """build-index re-reads the manifest from the origins and derives the descriptor itself."""
        try:
            await self.build_index.put_referrer(repo, subject, descriptor.digest)
        except ReferrerRefused as e:
            if e.limit:
                raise RegistryError("DENIED", message="referrer refused", detail=str(e)) from None
            raise RegistryError("MANIFEST_INVALID", detail=str(e)) from None
        return True

    # ---- blobs -----------------------------------------------------------------------------

    async def stat_blob(self, repo: str, digest: Digest) -> int | None:
        return await self.origins.stat(repo, digest)

    async def open_blob(self, repo: str, digest: Digest, byte_range: ByteRange | None) -> BlobReader | None:
        """A whole blob is checked against its digest while it streams (see
        kraken.store.verify): a wrong body from an origin is cut short, never delivered."""
        try:
            resp = await self.origins.open(repo, digest, byte_range.range_header() if byte_range else None)
        except BlobNotFound:
            return None
        if byte_range is not None and resp.status != 206:
            resp.release()
            raise RuntimeError(f"origin answered {resp.status} to a Range request for {digest}")
        chunks = self._count_downloaded(resp)
        if byte_range is None:
            def mismatch(error: DigestMismatch) -> None:
                self.metrics.digest_mismatches.inc()
                log.error("blob from origin fails its digest; response cut short", repo=repo,
                          digest=digest, actual=error.actual, origin=str(resp.url.origin()))

            chunks = verified(chunks, digest, mismatch)
        return StreamBlobReader(chunks, _releaser(resp))

    async def _count_downloaded(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        async for chunk in resp.content.iter_chunked(STREAM_CHUNK):
            self.metrics.bytes_downloaded.inc(len(chunk))
            yield chunk

    async def open_manifest(self, repo: str, digest: Digest, max_size: int) -> BinaryIO | None:
        """From the proxy's disk cache, filled from the digest's origin on a miss."""
        return await self.manifests.open(digest, lambda: self._manifest_chunks(repo, digest, max_size))

    async def _manifest_chunks(self, repo: str, digest: Digest, max_size: int) -> AsyncIterator[bytes]:
        try:
            resp = await self.origins.open(repo, digest)
        except BlobNotFound:
            raise ManifestMissing(digest) from None
        try:
            if resp.content_length is not None and resp.content_length > max_size:
                raise ManifestMissing(digest)
            received = 0
            async for chunk in resp.content.iter_chunked(MANIFEST_CHUNK):
                received += len(chunk)
                if received > max_size:
                    raise ManifestMissing(digest)
                yield chunk
        finally:
            resp.release()

    async def put_blob_from_file(self, repo: str, digest: Digest, path: Path) -> None:
        size = (await asyncio.to_thread(path.stat)).st_size
        try:
            await self.origins.upload_file(repo, digest, path)
        except DigestRefused as e:
            raise _digest_invalid(repo, digest, e) from None
        self.uploaded(repo, digest, size, SENT_AT_COMMIT)

    async def start_blob_writer(self, repo: str) -> BlobWriter | None:
        return OriginBlobWriter(self, repo, await self.origins.start_stream(repo))

    async def put_blob_bytes(self, repo: str, digest: Digest, data: bytes) -> None:
        await self.origins.upload_bytes(repo, digest, data)
        self.uploaded(repo, digest, len(data), SENT_AT_COMMIT)

    def uploaded(self, repo: str, digest: Digest, size: int, path: str) -> None:
        self.metrics.blobs_uploaded.labels(path).inc()
        self.metrics.bytes_uploaded.inc(size)
        log.info("blob pushed to origin", repo=repo, digest=digest, size=size, path=path)

    async def mount_blob(self, from_repo: str, to_repo: str, digest: Digest) -> bool:
        """Origins keep one copy per digest whatever the namespace, so a blob the source
        repository has is already there for the target. The stat under the source brings it
        into the owner's cache (from the source's backend if need be); the stat under the
        target is what adds it to the target: an origin that answers it from its cache queues
        the blob's write-back to the target's backend, which may differ from the source's."""
        mounted = (
            await self.origins.stat(from_repo, digest) is not None
            and await self.origins.stat(to_repo, digest) is not None
        )
        self.metrics.mounts.labels("mounted" if mounted else "missing").inc()
        return mounted


def _digest_invalid(repo: str, digest: Digest, refused: DigestRefused) -> RegistryError:
    log.warning("upload refused by the origin: wrong digest", repo=repo, digest=digest, error=str(refused))
    return RegistryError("DIGEST_INVALID", detail=str(refused))


def _releaser(resp: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    async def release() -> None:
        resp.release()

    return release


class OriginBlobWriter(BlobWriter):
    """Streams a client's upload to an origin as it arrives (kraken.origin.stream), so the
    client's final PUT costs one commit instead of a second transfer of the whole blob."""

    def __init__(self, storage: ProxyStorage, repo: str, stream: UploadStream) -> None:
        self._storage = storage
        self._repo = repo
        self._stream = stream

    async def write(self, chunk: bytes) -> None:
        await self._stream.write(chunk)

    async def commit(self, digest: Digest) -> bool:
        """Commit on the origin if it owns ``digest``; False sends the blob to the owner."""
        if self._stream.origin not in await self._storage.origins.locations(digest):
            return False
        try:
            await self._stream.commit(digest)
        except DigestRefused as e:
            raise _digest_invalid(self._repo, digest, e) from None
        self._storage.uploaded(self._repo, digest, self._stream.sent, STREAMED)
        return True

    async def abort(self) -> None:
        await self._stream.abort()
