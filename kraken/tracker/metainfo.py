"""Metainfo served to agents: proxied from the blob's owning origin, cached, single-flight.

Agents fetch a blob's metainfo from the tracker before they announce, so every agent pulling
an image asks for the same few digests at once: a bounded LRU cache answers repeats, and
concurrent misses for one (namespace, digest) share one origin call.

The origin's answers pass through: 404 (neither the origin nor its backend has the blob), 202
(the origin is still fetching it from its backend: the tracker waits at most
``poll_timeout`` rather than the origin client's usual minutes, since agents poll anyway), 422
(an empty blob has no torrent). An origin that cannot be reached, or answers a 5xx, gives
503. Only successes are cached: a missing blob may be pushed a moment later.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

import aiohttp

from kraken.core.digest import Digest
from kraken.core.metainfo import info_hash
from kraken.http.client import HTTPStatusError
from kraken.log import get_logger
from kraken.origin.client import BlobNotFound, BlobNotReady, OriginCluster
from kraken.tasks import SingleFlight, TaskOwner
from kraken.tracker.metrics import TrackerMetrics

log = get_logger("tracker")


@dataclass(frozen=True)
class MetainfoAnswer:
    """What the tracker answers: the status, and the metainfo (200) or the reason (``message``)."""

    status: int
    body: bytes = b""
    info_hash: bytes | None = None
    message: str = ""


@dataclass
class CachedMetainfo:
    metainfo: bytes
    info_hash: bytes
    expires: float


class MetainfoCache:
    """At most ``max_bytes`` of metainfo, least recently used out first, each for ``ttl``."""

    def __init__(self, max_bytes: int, ttl: float) -> None:
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._entries: OrderedDict[Digest, CachedMetainfo] = OrderedDict()
        self._bytes = 0

    def get(self, digest: Digest) -> CachedMetainfo | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            self._drop(digest)
            return None
        self._entries.move_to_end(digest)
        return entry

    def put(self, digest: Digest, metainfo: bytes, info_hash: bytes) -> None:
        if digest in self._entries:
            self._drop(digest)
        if len(metainfo) > self._max_bytes or self._ttl <= 0:
            return
        self._entries[digest] = CachedMetainfo(metainfo, info_hash, time.monotonic() + self._ttl)
        self._bytes += len(metainfo)
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, digest: Digest) -> None:
        self._bytes -= len(self._entries.pop(digest).metainfo)


class MetainfoProxy:
    def __init__(self, origins: OriginCluster, cache: MetainfoCache, metrics: TrackerMetrics,
                 owner: TaskOwner) -> None:
        self._origins = origins
        self._cache = cache
        self._metrics = metrics
        self._flights: SingleFlight[tuple[str, Digest], MetainfoAnswer] = SingleFlight(owner)

    async def get(self, namespace: str, digest: Digest) -> MetainfoAnswer:
        cached = self._cache.get(digest)
        if cached is not None:
            self._metrics.metainfo_cache.labels("hit").inc()
            return MetainfoAnswer(200, cached.metainfo, cached.info_hash)
        self._metrics.metainfo_cache.labels("miss").inc()
        return await self._flights.run((namespace, digest), lambda: self._fetch(namespace, digest))

    async def _fetch(self, namespace: str, digest: Digest) -> MetainfoAnswer:
        try:
            metainfo = await self._origins.get_metainfo(namespace, digest)
        except BlobNotFound:
            return MetainfoAnswer(404, message=f"{digest} not found in namespace {namespace!r}")
        except BlobNotReady:
            return MetainfoAnswer(202, message="blob is being fetched from the storage backend")
        except HTTPStatusError as e:
            if 400 <= e.status < 500:
                return MetainfoAnswer(e.status, message=e.message)
            return self._origin_error("status", digest, e)
        except (TimeoutError, ConnectionError, aiohttp.ClientError) as e:
            return self._origin_error("unreachable", digest, e)
        try:
            ih = bytes.fromhex(await asyncio.to_thread(info_hash, metainfo))
        except RuntimeError as e:  # libtorrent's parse error
            return self._origin_error("invalid", digest, e)
        self._cache.put(digest, metainfo, ih)
        return MetainfoAnswer(200, metainfo, ih)

    def _origin_error(self, kind: str, digest: Digest, error: BaseException) -> MetainfoAnswer:
        self._metrics.origin_errors.labels(kind).inc()
        log.warning("metainfo from origins failed", digest=digest, kind=kind, error=f"{type(error).__name__}: {error}")
        return MetainfoAnswer(503, message=f"origins unavailable: {type(error).__name__}: {error}")
