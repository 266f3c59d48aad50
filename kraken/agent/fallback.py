"""Reading a blob over HTTP from its owning origin: small blobs, and when P2P makes no progress.

Small blobs (``download.small_blob_max``: manifests, image configs) always come this way: a
BitTorrent connection's set-up (handshake, bitfield, interest, unchoke, each a round trip,
and a ~40 ms Nagle/delayed-ACK stall since libtorrent never sets ``TCP_NODELAY``) costs
several times what the bytes do, while one HTTP GET to an origin takes a few ms. The agent
seeds the blob afterwards, so later peers can still take it from the swarm.

A P2P download can stall for reasons the agent cannot fix: peers and origins announced at
addresses this host cannot reach (the classic "announced as localhost" mistake), a firewall
on the P2P ports, a tracker handing out dead peers. Rather than wait for the download timeout,
the agent drops a download that received nothing for ``download.fallback_after`` and reads the
blob from the origin that owns it on the hash ring, the way the proxy does. The bytes go
through the CAS upload path, so the sha256 is checked before anything reaches the cache.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from kraken.core.digest import Digest
from kraken.metrics import Metrics
from kraken.origin.client import BlobNotFound, BlobNotReady, OriginCluster
from kraken.store.cas import CAStore

CHUNK = 1 << 20


class FallbackFailed(Exception):
    """The origin could not give the blob either (missing, not ready, wrong bytes)."""


class HttpFallback:
    def __init__(self, origins: OriginCluster, cas: CAStore, after: float, metrics: Metrics) -> None:
        self.origins = origins
        self.cas = cas
        self.after = after
        self.fetches = metrics.counter(
            "kraken_agent_http_fallbacks_total",
            "P2P downloads that received nothing for download.fallback_after, fetched over HTTP "
            "from an origin instead, by result",
            ["result"],
        )
        self.small = metrics.counter(
            "kraken_agent_small_blob_reads_total",
            "Blobs of at most download.small_blob_max read over HTTP from an origin instead of P2P, by result",
            ["result"],
        )
        for result in ("ok", "failed"):
            self.fetches.labels(result)
            self.small.labels(result)

    async def fetch(self, namespace: str, digest: Digest, why: Literal["fallback", "small"] = "fallback") -> Path:
        """The blob, read from its owning origin into the cache (verified); counted by ``why``."""
        counter = self.small if why == "small" else self.fetches
        uid = self.cas.create_upload()
        try:
            resp = await self.origins.open(namespace, digest)
            try:
                await self.cas.write(uid, resp.content.iter_chunked(CHUNK))
            finally:
                resp.release()
            path = await self.cas.commit(uid, digest)
        except (BlobNotFound, BlobNotReady, ValueError) as e:  # ValueError: the CAS's digest checks
            await self._discard(uid)
            counter.labels("failed").inc()
            raise FallbackFailed(f"{type(e).__name__}: {e}") from None
        except BaseException:
            await self._discard(uid)
            counter.labels("failed").inc()
            raise
        counter.labels("ok").inc()
        return path

    async def _discard(self, uid: str) -> None:
        """Drop the partial upload (a failed commit has already removed it)."""
        if self.cas.has_upload(uid):
            await self.cas.abort(uid)
