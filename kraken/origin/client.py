"""Clients of the origin's HTTP API: one origin (:class:`OriginClient`) or the cluster
(:class:`OriginCluster`, which picks the origin that owns a digest on the hash ring).

An origin answers 202 while it fetches a blob from its storage backend; the read methods poll
with backoff until the blob is ready or ``poll_timeout`` passes.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from kraken.core.digest import Digest
from kraken.http.client import HttpClient
from kraken.http.health import check, probe_timeout
from kraken.http.healthcheck import HostHealth, RingMetrics
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.stream import UploadStream, commit_upload
from kraken.ring import HashRing, RingConfig

T = TypeVar("T")

log = get_logger("kraken.origin.client")

UPLOAD_CHUNK = 1 << 20


class BlobNotFound(Exception):
    """Neither the origin nor its storage backend has the blob."""


class BlobNotReady(Exception):
    """The origin was still fetching the blob from its backend when the poll deadline passed.

    Deliberately not a TimeoutError: the origin answered, so it must not be taken for down.
    """


class OriginClient:
    """Talks to one origin at ``addr`` (``host:port``)."""

    def __init__(self, addr: str, http: HttpClient, poll_timeout: float = 300.0, *, retry: bool = True) -> None:
        """``retry``: the HTTP client's own retries of a connection that cannot be opened; a
        ring of several origins turns them off and moves to the next owner instead
        (kraken.http.healthcheck). Other transient failures are retried either way."""
        self.addr = addr
        self._http = http
        self._base = http.base(addr)
        self._poll_timeout = poll_timeout
        self._retry = retry

    async def _request(self, method: str, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self._http.request(method, url, retry_connect=self._retry, **kwargs)

    def _blob_url(self, namespace: str, digest: Digest, prefix: str = "") -> str:
        return f"{self._base}{prefix}/namespace/{quote(namespace, safe='')}/blobs/{digest}"

    async def _poll(self, method: str, url: str, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """Send until the answer is not 202; raise BlobNotFound on 404. The caller releases it."""
        deadline = time.monotonic() + self._poll_timeout
        delay = 0.05
        while True:
            resp = await self._request(method, url, ok=(200, 202, 206, 404), headers=headers)
            if resp.status == 404:
                resp.release()
                raise BlobNotFound(url)
            if resp.status != 202:
                return resp
            resp.release()
            if time.monotonic() + delay > deadline:
                raise BlobNotReady(f"{method} {url}: still 202 (being fetched) after {self._poll_timeout}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def stat(self, namespace: str, digest: Digest) -> int | None:
        """The blob's size, or None if neither the origin nor its backend has it."""
        try:
            resp = await self._poll("HEAD", self._blob_url(namespace, digest))
        except BlobNotFound:
            return None
        resp.release()
        return int(resp.headers["Content-Length"])

    async def upload_file(self, namespace: str, digest: Digest, path: Path, *, replica: bool = False) -> None:
        """Upload a file: one POST, one PATCH streaming the whole file, one PUT.

        A blob the origin already has is a success; bytes that do not hash to ``digest``
        raise :class:`~kraken.origin.stream.DigestRefused`. ``replica`` marks a copy between ring
        owners (the receiver neither replicates it further nor writes it back at once).
        """
        size = (await asyncio.to_thread(path.stat)).st_size
        await self._upload(namespace, digest, _file_chunks(path), size, replica)

    async def upload_bytes(self, namespace: str, digest: Digest, data: bytes) -> None:
        await self._upload(namespace, digest, data, len(data), replica=False)

    async def _upload(
        self, namespace: str, digest: Digest, body: bytes | AsyncIterator[bytes], size: int, replica: bool
    ) -> None:
        uploads = f"{self._blob_url(namespace, digest)}/uploads"
        params = {"replica": "true"} if replica else None
        resp = await self._request("POST", uploads, ok=(200, 409), params=params)
        resp.release()
        if resp.status == 409:
            return
        upload = f"{uploads}/{resp.headers['Location']}"
        headers = {"Content-Range": f"0-{size}", "Content-Length": str(size)}
        (await self._request("PATCH", upload, ok=(200,), data=body, headers=headers)).release()
        await commit_upload(self._http, upload, params)

    async def open(
        self, namespace: str, digest: Digest, range_header: str | None = None
    ) -> aiohttp.ClientResponse:
        """GET the blob (200, or 206 for a range); the caller reads and releases the response."""
        headers = {"Range": range_header} if range_header else None
        return await self._poll("GET", self._blob_url(namespace, digest), headers)

    async def has_local(self, namespace: str, digest: Digest, timeout: float) -> bool:
        """Whether this origin's cache holds the blob (no backend fetch); one try, at most
        ``timeout`` seconds."""
        resp = await self._http.request("HEAD", self._blob_url(namespace, digest, "/internal"), ok=(200, 404),
                                        retry=False, timeout=probe_timeout(self._http, timeout))
        resp.release()
        return resp.status == 200

    async def download_local(self, namespace: str, digest: Digest, dst: Path) -> None:
        """Copy the blob from this origin's cache only (no backend fetch) into file ``dst``;
        raises BlobNotFound if the origin has no verified copy. The caller verifies ``dst``."""
        url = self._blob_url(namespace, digest, "/internal")
        async with await self._request("GET", url, ok=(200, 404)) as resp:
            if resp.status == 404:
                raise BlobNotFound(url)
            f = await asyncio.to_thread(open, dst, "wb")
            try:
                async for chunk in resp.content.iter_chunked(UPLOAD_CHUNK):
                    await asyncio.to_thread(f.write, chunk)
            finally:
                await asyncio.to_thread(f.close)

    async def read_bytes(self, namespace: str, digest: Digest) -> bytes:
        resp = await self.open(namespace, digest)
        try:
            return await resp.read()
        finally:
            resp.release()

    async def start_stream(self, namespace: str) -> UploadStream:
        """A digest-less upload fed while its bytes arrive (see kraken.origin.stream)."""
        url = f"{self._base}/namespace/{quote(namespace, safe='')}/uploads"
        resp = await self._request("POST", url)
        resp.release()
        return UploadStream(self._http, self.addr, f"{url}/{resp.headers['Location']}")

    async def locations(self, digest: Digest) -> list[str]:
        """The origins that own ``digest`` according to this origin's ring."""
        resp = await self._request("GET", f"{self._base}/blobs/{digest}/locations")
        resp.release()
        return [h.strip() for h in resp.headers.get("Origin-Locations", "").split(",") if h.strip()]

    async def replicate_to_remote(self, namespace: str, digest: Digest, remote: list[str]) -> None:
        """Have this origin copy the blob to the origin cluster ``remote`` (kraken.origin.remote);
        waits while it fetches the blob from its backend. Raises BlobNotFound when no copy
        exists, HTTPStatusError (503) when the remote cluster did not take it."""
        url = f"{self._blob_url(namespace, digest)}/remote/{quote(','.join(remote), safe=':,')}"
        (await self._poll("POST", url)).release()

    async def get_metainfo(self, namespace: str, digest: Digest) -> bytes:
        """The blob's bencoded v1 torrent; waits while the origin fetches the blob."""
        resp = await self._poll("GET", f"{self._blob_url(namespace, digest, '/internal')}/metainfo")
        try:
            return await resp.read()
        finally:
            resp.release()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file's bytes in chunks read in a worker thread (disk reads never block the loop)."""
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, UPLOAD_CHUNK):
            yield chunk
    finally:
        f.close()


# A host that fails like this is taken for down; aiohttp's read timeouts are connection errors.
_UNREACHABLE = (aiohttp.ClientConnectionError, asyncio.TimeoutError)


class OriginCluster:
    """The origin cluster seen through the hash ring: each call goes to the digest's owner.

    Which origins are healthy is this process's own view (:mod:`kraken.http.healthcheck`,
    configured in the ring's section): active ``/health`` checks, run by :meth:`start` until
    :meth:`close`, and passive ones, the calls here that fail to connect or time out. A call
    goes to the healthy owners first; one that cannot reach its origin moves on to the next
    host in the ring's order (counted in ``kraken_ring_failovers_total``), which fetches the
    blob from the storage backend if it lacks it.
    """

    def __init__(self, config: RingConfig, http: HttpClient, poll_timeout: float = 300.0,
                 metrics: RingMetrics | None = None) -> None:
        self._ring = HashRing.from_config(config)
        # Several origins: a connection refused moves on to the next owner, not retried on the same one.
        retry = len(self._ring.hosts) == 1
        self._clients = {host: OriginClient(host, http, poll_timeout, retry=retry) for host in self._ring.hosts}
        self._http = http
        self._timeout = config.health_check.timeout
        self._metrics = metrics or RingMetrics(Metrics("ring"))
        self.health = HostHealth(self._ring.hosts, config.health_check, config.passive, self._metrics, "origin")
        self._checker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the active health checks (inside the component's running loop)."""
        if self._checker is None:
            self._checker = asyncio.get_running_loop().create_task(self.health.run(self._probe), name="origin-health")

    async def close(self) -> None:
        """Stop the active health checks."""
        task, self._checker = self._checker, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _probe(self, host: str) -> None:
        await check(self._http, host, self._timeout)

    def _sync(self) -> None:
        self._ring.set_healthy(self.health.healthy())

    def _failed(self, host: str, error: BaseException) -> None:
        log.warning("origin unreachable, trying the next", origin=host, error=f"{type(error).__name__}: {error}")
        self.health.failed(host, error)
        self._sync()

    async def _first_reachable(self, hosts: list[str], what: str, op: Callable[[OriginClient], Awaitable[T]]) -> T:
        """``op`` on the first of ``hosts`` that can be reached."""
        for i, host in enumerate(hosts):
            if i:
                self._metrics.failovers.inc()
            try:
                return await op(self._clients[host])
            except _UNREACHABLE as e:
                self._failed(host, e)
        raise ConnectionError(f"no origin reachable for {what} (tried {', '.join(hosts)})")

    async def _route(self, digest: Digest, op: Callable[[OriginClient], Awaitable[T]]) -> T:
        self._sync()
        return await self._first_reachable(self._ring.ranked(digest), str(digest), op)

    async def stat(self, namespace: str, digest: Digest) -> int | None:
        return await self._route(digest, lambda c: c.stat(namespace, digest))

    async def upload_file(self, namespace: str, digest: Digest, path: Path) -> None:
        """A whole file to the first reachable owner: an origin that dies mid-upload is not
        retried, the file is sent again to the next."""
        await self._route(digest, lambda c: c.upload_file(namespace, digest, path))

    async def upload_bytes(self, namespace: str, digest: Digest, data: bytes) -> None:
        await self._route(digest, lambda c: c.upload_bytes(namespace, digest, data))

    async def open(
        self, namespace: str, digest: Digest, range_header: str | None = None
    ) -> aiohttp.ClientResponse:
        return await self._route(digest, lambda c: c.open(namespace, digest, range_header))

    async def read_bytes(self, namespace: str, digest: Digest) -> bytes:
        return await self._route(digest, lambda c: c.read_bytes(namespace, digest))

    async def start_stream(self, namespace: str) -> UploadStream:
        """Stream an upload of unknown digest to a healthy origin, picked at random: with one
        origin (or ``max_replica`` equal to the ring size) it always owns the blob; otherwise
        the caller checks :meth:`locations` at commit and falls back when it does not."""
        self._sync()
        hosts = list(self._ring.healthy or self._ring.hosts)
        random.shuffle(hosts)
        return await self._first_reachable(hosts, "a streamed upload", lambda c: c.start_stream(namespace))

    async def locations(self, digest: Digest) -> list[str]:
        """The healthy owners of ``digest`` (computed locally: the ring is configured alike everywhere)."""
        self._sync()
        return self._ring.owners(digest)

    async def get_metainfo(self, namespace: str, digest: Digest) -> bytes:
        return await self._route(digest, lambda c: c.get_metainfo(namespace, digest))

    async def replicate_to_remote(self, namespace: str, digest: Digest, remote: list[str]) -> None:
        await self._route(digest, lambda c: c.replicate_to_remote(namespace, digest, remote))
