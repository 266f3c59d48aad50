"""What the agent asks the tracker over HTTP, besides the announces libtorrent sends itself:
a blob's torrent metainfo (``GET /namespace/{ns}/blobs/{d}/metainfo``).

The tracker answers 202 while the owning origin fetches the blob from its backend, so the
agent polls with backoff up to a deadline. With several trackers (``tracker.addrs`` /
``tracker.dns``) each request goes to the first that answers (:class:`~kraken.p2p.trackers.
TrackerList`: a connection failure or timeout fails over to the next at once, logged as
``tracker failover``). When no tracker can be reached that is logged as ``tracker
unreachable`` (the line to grep for when pulls answer 503) and raised as a
:class:`TrackerUnavailable`, a ``ConnectionError``, which the registry answers with 503
UNAVAILABLE; the next pull asks again, so pulls work as soon as a tracker is back.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from kraken.core.digest import Digest
from kraken.http.client import HttpClient, HTTPStatusError
from kraken.http.health import check_any
from kraken.log import get_logger
from kraken.p2p.trackers import FAILOVER_ERRORS, TrackerList
from kraken.tracker.protocol import SLOT_HEADER

log = get_logger("agent")

POLL_START = 0.05
POLL_MAX = 2.0


class TrackerUnavailable(ConnectionError):
    """No tracker could be reached, or the one reached answered 5xx."""


class EmptyBlob(Exception):
    """The tracker (origin) says the blob has zero bytes: it has no torrent."""


class MetainfoNotReady(TimeoutError):
    """Still 202 (the origin is fetching the blob) when the deadline passed."""


@dataclass(frozen=True)
class Metainfo:
    """A blob's torrent, and this agent's swarm slot for it (which pieces it asks for first:
    :mod:`kraken.p2p.shares`; 0 when the tracker gives none)."""

    data: bytes
    slot: int = 0


class TrackerClient:
    """``announce_url`` is the URL libtorrent announces to: the tracker's ``/announce``, or the
    announce relay's when the tracker is HTTPS or there are several
    (:mod:`kraken.p2p.announcerelay`); libtorrent's SSRF check wants its path to start with
    ``/announce``."""

    def __init__(self, trackers: TrackerList, http: HttpClient, poll_timeout: float, announce_url: str) -> None:
        self.trackers = trackers
        self.http = http
        self.poll_timeout = poll_timeout
        self.announce_url = announce_url

    async def get_metainfo(self, namespace: str, digest: Digest) -> Metainfo | None:
        """The blob's bencoded torrent; ``None`` if no origin has the blob.

        Raises :class:`EmptyBlob` for a zero-byte blob, :class:`MetainfoNotReady` after
        ``poll_timeout`` of 202s, :class:`TrackerUnavailable` if no tracker answers.
        """
        path = f"/namespace/{quote(namespace, safe='')}/blobs/{digest}/metainfo"
        deadline = time.monotonic() + self.poll_timeout
        delay = POLL_START
        while True:
            status, body, slot = await self._get(path, digest)
            if status == 200:
                return Metainfo(body, slot)
            if status == 404:
                return None
            if status == 422:
                raise EmptyBlob(str(digest))
            if time.monotonic() + delay > deadline:
                raise MetainfoNotReady(f"metainfo of {digest} not ready after {self.poll_timeout:g}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    async def _get(self, path: str, digest: Digest) -> tuple[int, bytes, int]:
        # One tracker: the client's own retries; several: the next tracker instead.
        retry = len(self.trackers.order()) == 1

        async def attempt(addr: str) -> tuple[int, bytes, int]:
            resp = await self.http.request("GET", self.http.url(addr, path), ok=(200, 202, 404, 422), retry=retry)
            slot = resp.headers.get(SLOT_HEADER, "0")
            try:
                return resp.status, await resp.read(), int(slot) if slot.isdigit() else 0
            finally:
                resp.release()

        try:
            return await self.trackers.call(attempt)
        except HTTPStatusError as e:
            if e.status < 500:
                raise
            log.warning("tracker unreachable", digest=digest, status=e.status, error=str(e)[:300])
            raise TrackerUnavailable(f"tracker answered {e.status}: {e.message[:200]}") from None
        except (*FAILOVER_ERRORS, aiohttp.ClientError) as e:
            trackers = self.trackers.describe()
            log.warning("tracker unreachable", tracker=trackers, digest=digest, error=repr(e))
            raise TrackerUnavailable(f"tracker unreachable ({trackers}): {e!r}") from None

    async def ping(self) -> None:
        """Raise unless a tracker answers ``/health`` (readiness)."""
        await check_any(self.http, self.trackers.order(), "tracker")
