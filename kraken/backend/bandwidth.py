"""Per-backend bandwidth limits (``bandwidth:`` of a ``backends:`` entry, Kraken's keys).

A team shares one bucket (or one WAN link) among many origins: each origin may use only its
share of the link, so the configured rates are divided by the number of origins on the ring
(:meth:`BandwidthLimiter.adjust`, called by the origin with its ring size, as Kraken's
``BandwidthWatcher`` does).

The limit is applied by :class:`ThrottledBackend`, a wrapper around any backend, so every kind
(testfs, file, s3, gcs, ...) is limited the same way without knowing it: a transfer first takes
its size in bytes from a token bucket (egress for uploads, ingress for downloads) and then runs.
Like Kraken's ``ThrottledClient`` it bounds the average rate, not the instantaneous one: the
bucket is taken in pieces of at most ``token_size`` bits, so concurrent transfers share the
rate fairly (the bucket serves its waiters in order), and a transfer that waited its share then
moves at the link's speed. A download asks the backend for the object's size first (a stat),
as Kraken's does; a missing object costs no tokens.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kraken.backend.base import Backend, BackendNotFound, BlobInfo
from kraken.core.digest import Digest
from kraken.log import get_logger

log = get_logger("kraken.backend")

#: Kraken's default ``token_size``: the bucket's granularity, 8 Mbit (1 MB).
DEFAULT_TOKEN_SIZE = 8 << 20


@dataclass
class BandwidthConfig:
    """Kraken's ``bandwidth:`` keys. Rates are bits per second for the whole cluster (each
    origin gets ``rate / number of origins on the ring``); 0 leaves that direction unlimited."""

    enable: bool = False
    egress_bits_per_sec: int = 0
    ingress_bits_per_sec: int = 0
    token_size: int = DEFAULT_TOKEN_SIZE

    def __post_init__(self) -> None:
        if self.egress_bits_per_sec < 0 or self.ingress_bits_per_sec < 0:
            raise ValueError("egress_bits_per_sec and ingress_bits_per_sec must be >= 0")
        if self.token_size < 8:
            raise ValueError("token_size must be at least 8 bits")


class TokenBucket:
    """``rate`` bytes per second with bursts of up to ``burst`` bytes.

    :meth:`take` may drive the bucket into debt and then sleeps until the debt is repaid, while
    holding a lock: waiters are served in arrival order, and the bytes granted by time ``t``
    never exceed ``burst + rate * (t - start)``.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (what accrued so far keeps the old rate)."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._refill()
        self.rate = rate

    async def take(self, nbytes: int) -> None:
        """Return once ``nbytes`` may be sent, taken in pieces of at most ``burst`` bytes so
        that other transfers get their turn between the pieces."""
        while nbytes > 0:
            piece = min(nbytes, self.burst)
            async with self._lock:
                self._refill()
                self._tokens -= piece
                if self._tokens < 0:
                    await asyncio.sleep(-self._tokens / self.rate)
            nbytes -= piece


class BandwidthLimiter:
    """The egress (upload) and ingress (download) buckets of one backend."""

    def __init__(self, config: BandwidthConfig) -> None:
        self.config = config
        burst = max(1, config.token_size // 8)
        self.egress = TokenBucket(config.egress_bits_per_sec / 8, burst) if config.egress_bits_per_sec else None
        self.ingress = TokenBucket(config.ingress_bits_per_sec / 8, burst) if config.ingress_bits_per_sec else None

    def adjust(self, denominator: int) -> None:
        """Divide the configured rates by ``denominator`` (the origins on the ring). Always
        from the configured rates, so calls do not compound."""
        if denominator < 1:
            raise ValueError(f"bandwidth denominator must be >= 1, got {denominator}")
        if self.egress is not None:
            self.egress.set_rate(self.config.egress_bits_per_sec / 8 / denominator)
        if self.ingress is not None:
            self.ingress.set_rate(self.config.ingress_bits_per_sec / 8 / denominator)

    @property
    def egress_bits_per_sec(self) -> float | None:
        """The current egress limit (None: unlimited)."""
        return None if self.egress is None else self.egress.rate * 8

    @property
    def ingress_bits_per_sec(self) -> float | None:
        """The current ingress limit (None: unlimited)."""
        return None if self.ingress is None else self.ingress.rate * 8

    async def reserve_egress(self, nbytes: int) -> None:
        if self.egress is not None:
            await self.egress.take(nbytes)

    async def reserve_ingress(self, nbytes: int) -> None:
        if self.ingress is not None:
            await self.ingress.take(nbytes)


class ThrottledBackend(Backend):
    """``inner`` with its uploads and downloads taken from ``limiter``'s buckets first.

    Metadata calls (stat, list, the readiness probe) pass straight through: they move no
    object bytes. :meth:`Backend.holds` is the interface's own (not the inner backend's), so
    its read-back goes through :meth:`download_hashed` and counts against ingress.
    """

    def __init__(self, inner: Backend, limiter: BandwidthLimiter) -> None:
        self.inner = inner
        self.limiter = limiter
        # The origin asks the routed backend whether it takes pushes: a limited pull-through
        # must still refuse them, or pushes would queue write-backs that can never succeed.
        self.read_only = inner.read_only

    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        return await self.inner.stat(namespace, name)

    async def upload(self, namespace: str, name: str, src: Path) -> None:
        size = (await asyncio.to_thread(os.stat, src)).st_size
        await self.limiter.reserve_egress(size)
        await self.inner.upload(namespace, name, src)

    async def upload_bytes(self, namespace: str, name: str, data: bytes) -> None:
        await self.limiter.reserve_egress(len(data))
        await self.inner.upload_bytes(namespace, name, data)

    async def _reserve_download(self, namespace: str, name: str) -> None:
        info = await self.inner.stat(namespace, name)
        if info is None:
            raise BackendNotFound(f"{name}: not found")
        await self.limiter.reserve_ingress(info.size)

    async def download(self, namespace: str, name: str, dst: Path) -> None:
        await self._reserve_download(namespace, name)
        await self.inner.download(namespace, name, dst)

    async def download_hashed(self, namespace: str, name: str, dst: Path, algorithm: str = "sha256") -> Digest:
        await self._reserve_download(namespace, name)
        return await self.inner.download_hashed(namespace, name, dst, algorithm)

    async def download_bytes(self, namespace: str, name: str) -> bytes:
        await self._reserve_download(namespace, name)
        return await self.inner.download_bytes(namespace, name)

    async def list(self, prefix: str) -> list[str]:
        return await self.inner.list(prefix)

    async def ready(self) -> None:
        await self.inner.ready()

    async def close(self) -> None:
        await self.inner.close()


def throttle(backend: Backend, config: BandwidthConfig, namespace: str) -> Backend:
    """``backend`` limited as ``config`` says, or ``backend`` itself when it is not enabled."""
    if not config.enable:
        return backend
    limiter = BandwidthLimiter(config)
    log.info("backend bandwidth limited", namespace=namespace,
             egress_bits_per_sec=limiter.egress_bits_per_sec or "unlimited",
             ingress_bits_per_sec=limiter.ingress_bits_per_sec or "unlimited")
    return ThrottledBackend(backend, limiter)
