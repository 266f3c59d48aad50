"""The agent's blobs: a verified cache on disk, filled by P2P downloads.

A blob the cache lacks is downloaded like this (one download per digest however many ask:
concurrent callers share it):

1. its metainfo comes from the tracker (``namespace`` = repository), which also tells the
   tracker which origins own the torrent, so the announce that follows gets them as seeders;
2. libtorrent downloads it into ``<store.root>/download/<hex>`` (each piece SHA-1 checked);
   a blob of at most ``download.small_blob_max`` bytes is read over HTTP from its owning
   origin instead (sha256-verified on the way into the cache, then seeded: see
   :mod:`kraken.agent.fallback`). A blob of more than one piece can be streamed to clients
   meanwhile, in order (:meth:`AgentBlobs.open`, :mod:`kraken.agent.streaming`). A P2P
   download that receives nothing for ``download.fallback_after`` is dropped and the blob
   read over HTTP from its owning origin instead;
3. the whole file's sha256 must equal the digest (the torrent only proves the bytes match
   the metainfo, and the metainfo could belong to other bytes): for a blob of several pieces
   it is computed on the pieces in order as they arrive (:meth:`LiveBlob.hash_pieces`), no
   second pass; a single piece is hashed from the file in a worker thread. A mismatch
   removes the torrent and its file, so nothing of it reaches the cache, and cuts short the
   responses streaming it before their last piece;
4. libtorrent moves the file into the cache (``cache/sha256/ab/cd/<hex>``, a rename: the
   torrent is named after the digest hex) and keeps seeding it from there, with no window
   without a seed and no re-hashing of pieces.

A cached blob is read through :meth:`CAStore.verified_path` (hashed again on the first read
after a start or once its file changed): a corrupt one is quarantined, its torrent dropped,
and it is downloaded again like a blob the cache lacks.

Zero-byte blobs have no torrent (the origin answers 422 for their metainfo): the agent writes
the empty blob itself, which it can because its content is known from the digest.
"""
from __future__ import annotations

import asyncio
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
import libtorrent as lt

from kraken.agent.fallback import FallbackFailed, HttpFallback
from kraken.agent.streaming import LiveBlob
from kraken.agent.tracker import EmptyBlob, Metainfo, TrackerClient
from kraken.core.digest import Digest, hash_file
from kraken.core.metainfo import info_hash as metainfo_info_hash
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.p2p import DownloadResult, P2PError, P2PSession
from kraken.p2p.shares import ShareSteering
from kraken.store.cas import CAStore, file_key
from kraken.tasks import SingleFlight, TaskOwner

log = get_logger("agent")

EMPTY_SHA256 = Digest.of_bytes(b"")
METAINFO_META = "metainfo"
#: How many metainfos a HEAD (or a manifest's size check) keeps for the download that usually
#: follows at once, and for how long: it saves that download a second round trip to the
#: tracker and the origin. A digest's metainfo never changes, so a stale one is never wrong.
METAINFO_MEMO_ENTRIES = 256
METAINFO_MEMO_SECONDS = 10.0


class BlobUnavailable(Exception):
    """The blob exists but could not be brought into the cache (download failed or timed out,
    the bytes did not match the digest, unusable metainfo). Retrying later may work."""


class CorruptBlob(BlobUnavailable):
    """The downloaded bytes do not hash to the digest (they never enter the cache)."""


@dataclass(frozen=True)
class TorrentFacts:
    info_hash: str
    size: int
    num_pieces: int
    piece_length: int


def parse_metainfo(metainfo: bytes, digest: Digest) -> TorrentFacts:
    """Check that the torrent is one file named after the digest hex (where the cache expects
    it, and no path tricks) and return its info-hash and size. Run in a worker thread."""
    try:
        ti = lt.torrent_info(metainfo)
    except RuntimeError as e:
        raise BlobUnavailable(f"metainfo of {digest} does not parse: {e}") from None
    if ti.num_files() != 1 or ti.name() != digest.hex:
        raise BlobUnavailable(f"metainfo of {digest} is not one file named {digest.hex}")
    return TorrentFacts(str(ti.info_hashes().v1), ti.total_size(), ti.num_pieces(), ti.piece_length())


class AgentBlobs:
    """Cache lookups, single-flight P2P downloads into the cache, and removals."""

    def __init__(
        self,
        cas: CAStore,
        staging: Path,
        session: P2PSession,
        tracker: TrackerClient,
        download_timeout: float,
        metrics: Metrics,
        fallback: HttpFallback | None = None,
        small_blob_max: int = 0,
    ) -> None:
        self.cas = cas
        self.fallback = fallback
        self.small_blob_max = small_blob_max if fallback is not None else 0
        self._metainfo_memo: OrderedDict[Digest, tuple[float, Metainfo, TorrentFacts]] = OrderedDict()
        self.staging = staging
        self.session = session
        self.tracker = tracker
        self.download_timeout = download_timeout
        self._tasks = TaskOwner("agent-downloads")
        # A download logs its own failures ("blob download failed"): one that nobody waits for
        # any more is not reported a second time, with a traceback, by the task owner.
        self._downloads: SingleFlight[Digest, Path | None] = SingleFlight(
            self._tasks, "download", report_orphans=False)
        self._reseeding: set[Digest] = set()
        # The info-hash each cached blob was last seeded under, so that a read of a blob still
        # seeded checks the session without reading its metainfo (at most one per cached blob).
        self._info_hashes: dict[Digest, str] = {}
        self._live: dict[Digest, LiveBlob] = {}
        self._live_added = asyncio.Event()  # set (and replaced) when a download adds a LiveBlob
        self._fetches = metrics.counter(
            "kraken_agent_blob_fetches_total",
            "Blob reads by outcome: cache (hit), downloaded, not_found, corrupt (failed sha256), error",
            ["result"],
        )
        for result in ("cache", "downloaded", "not_found", "corrupt", "error"):
            self._fetches.labels(result)
        session.on_seed_corrupt = self._seed_corrupt

    @staticmethod
    async def create(
        cas: CAStore, staging: Path, session: P2PSession, tracker: TrackerClient, download_timeout: float,
        metrics: Metrics, fallback: HttpFallback | None = None, small_blob_max: int = 0,
    ) -> AgentBlobs:
        """Empty the staging dir and the store's upload dir first: files there are partial
        downloads (P2P, HTTP fallback) of a previous run."""
        await asyncio.to_thread(_reset_dir, staging)
        await asyncio.to_thread(cas.clear_uploads)
        return AgentBlobs(cas, staging, session, tracker, download_timeout, metrics, fallback, small_blob_max)

    async def close(self) -> None:
        """Cancel downloads in flight (the session removes their torrents and partial files)."""
        await self._tasks.close()

    def cached_size(self, digest: Digest) -> int | None:
        """Size from the cache (a stat); the read counts for idle-time eviction."""
        size = self.cas.size(digest)
        if size is not None:
            self.cas.touch(digest)
        return size

    async def size(self, namespace: str, digest: Digest) -> int | None:
        """The blob's size without downloading it: from the cache, else from its metainfo."""
        size = self.cached_size(digest)
        if size is not None:
            return size
        try:
            found = await self._metainfo(namespace, digest)
        except EmptyBlob:
            return 0 if digest == EMPTY_SHA256 else None
        if found is None:
            return None
        metainfo, facts = found
        self._metainfo_memo[digest] = (time.monotonic() + METAINFO_MEMO_SECONDS, metainfo, facts)
        while len(self._metainfo_memo) > METAINFO_MEMO_ENTRIES:
            self._metainfo_memo.popitem(last=False)
        return facts.size

    async def _metainfo(self, namespace: str, digest: Digest) -> tuple[Metainfo, TorrentFacts] | None:
        """The blob's metainfo and what it says (``None``: no origin has the blob); the one a
        recent :meth:`size` call fetched, if any."""
        memo = self._metainfo_memo.pop(digest, None)
        if memo is not None and memo[0] > time.monotonic():
            return memo[1], memo[2]
        metainfo = await self.tracker.get_metainfo(namespace, digest)
        if metainfo is None:
            return None
        return metainfo, await asyncio.to_thread(parse_metainfo, metainfo.data, digest)

    async def fetch(self, namespace: str, digest: Digest) -> Path | None:
        """The cached blob's path, downloading it first if needed; ``None`` if no origin has it.

        Raises :class:`BlobUnavailable`, or the tracker's errors (``ConnectionError``,
        ``TimeoutError``). A caller that goes away does not stop a download others share.
        """
        if self.cached_size(digest) is not None:
            path = await self.cas.verified_path(digest)
            if path is not None:
                self._fetches.labels("cache").inc()
                self._seed_again(digest)
                return path
            await self._drop_torrent(self.cas.path(digest))
        return await self._downloads.run(digest, lambda: self._counted_download(namespace, digest))

    async def open(self, namespace: str, digest: Digest) -> Path | LiveBlob | None:
        """:meth:`fetch`, except that a cold blob of several pieces comes as a :class:`LiveBlob`
        to stream as soon as its first piece is verified (the download goes on; errors before
        that are raised as by :meth:`fetch`, so the client gets a 503, not a cut response)."""
        fetch = asyncio.ensure_future(self.fetch(namespace, digest))
        try:
            while not fetch.done():
                live = self._live.get(digest)
                waiting = asyncio.ensure_future(self._live_added.wait() if live is None else live.first_piece())
                try:
                    await asyncio.wait({fetch, waiting}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
                if live is not None and not fetch.done():
                    if waiting.done() and not waiting.cancelled() and waiting.result():
                        return live
                    break  # the download failed before its first piece: fetch raises it
            return await fetch
        finally:
            fetch.cancel()  # only this wait: the download is the agent's

    async def _counted_download(self, namespace: str, digest: Digest) -> Path | None:
        """:meth:`_download`, counted once per download however many callers share it."""
        try:
            path = await self._download(namespace, digest)
        except Exception as e:
            self._fetches.labels("corrupt" if isinstance(e, CorruptBlob) else "error").inc()
            raise
        self._fetches.labels("not_found" if path is None else "downloaded").inc()
        return path

    async def _download(self, namespace: str, digest: Digest) -> Path | None:
        start = time.monotonic()
        try:
            found = await self._metainfo(namespace, digest)
        except EmptyBlob:
            if digest != EMPTY_SHA256:
                raise BlobUnavailable(
                    f"the origin says {digest} is empty, but that is not the digest of no bytes") from None
            return await self.cas.put_bytes(digest, b"")
        if found is None:
            log.info("blob not found", namespace=namespace, digest=digest)
            return None
        metainfo, facts = found
        if facts.size <= self.small_blob_max:
            return await self._over_http(namespace, digest, metainfo.data, start, why="small")
        log.info("blob download started", namespace=namespace, digest=digest, size=facts.size,
                 pieces=facts.num_pieces, swarm_slot=metainfo.slot)
        if facts.num_pieces < 2:
            return await self._download_torrent(namespace, digest, metainfo, facts, None, start)
        live = LiveBlob(self.session, facts.info_hash, digest, facts.size, facts.piece_length, facts.num_pieces)
        self._live[digest] = live
        self._live_added.set()
        self._live_added = asyncio.Event()
        try:
            path = await self._download_torrent(namespace, digest, metainfo, facts, live, start)
        except BaseException as e:
            live.settle(None, e if isinstance(e, Exception) else BlobUnavailable(f"download of {digest} cancelled"))
            raise
        finally:
            del self._live[digest]
        live.settle(path)
        return path

    async def _download_torrent(
        self, namespace: str, digest: Digest, metainfo: Metainfo, facts: TorrentFacts, live: LiveBlob | None,
        start: float,
    ) -> Path:
        """P2P (or the HTTP fallback), the sha256 (in order beside the download with ``live``)
        and the move into the cache."""
        hashing: asyncio.Future[Digest] | None = None

        def hash_pieces() -> None:
            nonlocal hashing
            if live is not None and hashing is None:
                hashing = asyncio.ensure_future(live.hash_pieces())

        try:
            try:
                result = await self._p2p(metainfo, facts, hash_pieces)
            except P2PError as e:  # DownloadTimeout included
                log.error("blob download failed", namespace=namespace, digest=digest, error=str(e))
                raise BlobUnavailable(f"download of {digest} failed: {e}") from None
            if result is None:
                return await self._over_http(namespace, digest, metainfo.data, start, why="fallback")
            try:
                path = await self._verify_and_cache(namespace, digest, facts, result.path, metainfo.data, hashing)
            except OSError as e:
                await self.session.remove(facts.info_hash, delete_files=True)
                raise BlobUnavailable(f"could not verify or cache {digest}: {e}") from None
        finally:
            if hashing is not None:  # its error, if any, is taken here (or by _sha256)
                hashing.cancel()
                await asyncio.gather(hashing, return_exceptions=True)
        log.info("blob cached", namespace=namespace, digest=digest, size=facts.size, via="p2p",
                 seconds=round(time.monotonic() - start, 3), path=path, streamed=live is not None)
        return path

    async def _p2p(
        self, metainfo: Metainfo, facts: TorrentFacts, on_added: Callable[[], None]
    ) -> DownloadResult | None:
        """The P2P download; ``None`` if it received nothing for ``fallback.after`` (then it is
        dropped, its partial file removed). ``on_added`` runs once the torrent is in the session."""
        steering = ShareSteering(facts.num_pieces, metainfo.slot)
        download = asyncio.ensure_future(self.session.download(
            metainfo.data, self.staging, self.tracker.announce_url, timeout=self.download_timeout,
            piece_priorities=steering.initial(), on_added=on_added,
        ))
        info_hash = facts.info_hash
        steer = asyncio.ensure_future(steering.run(
            lambda: self.session.handle(info_hash), lambda: self.session.hurrying(info_hash),
            lambda: self.session.shared(info_hash)))
        download.add_done_callback(lambda _: steer.cancel())
        if self.fallback is None or self.fallback.after <= 0:
            return await download
        try:
            received, since = -1, time.monotonic()
            while True:
                done, _ = await asyncio.wait({download}, timeout=min(1.0, self.fallback.after / 4))
                if done:
                    return download.result()
                now = self.session.downloaded(facts.info_hash) or 0
                if now > received:
                    received, since = now, time.monotonic()
                elif time.monotonic() - since >= self.fallback.after:
                    download.cancel()
                    await asyncio.gather(download, return_exceptions=True)
                    return None
        except asyncio.CancelledError:
            download.cancel()
            raise

    async def _over_http(
        self, namespace: str, digest: Digest, metainfo: bytes, start: float, why: Literal["fallback", "small"],
    ) -> Path:
        """The blob from its owning origin over HTTP (a small blob, or the fallback of a P2P
        download that made no progress), then seeded like a download."""
        assert self.fallback is not None
        if why == "fallback":
            log.warning("P2P download made no progress; fetching the blob from its origin over HTTP",
                        namespace=namespace, digest=digest, after=self.fallback.after)
        try:
            path = await self.fallback.fetch(namespace, digest, why)
        except (FallbackFailed, ConnectionError, TimeoutError, aiohttp.ClientError, OSError) as e:
            log.error("HTTP read from the origin failed", namespace=namespace, digest=digest, why=why, error=str(e))
            what = "P2P made no progress and the origin failed too" if why == "fallback" else "the origin failed"
            raise BlobUnavailable(f"{digest}: {what}: {e}") from None
        await self.cas.write_meta(digest, METAINFO_META, metainfo)
        self._seed_again(digest)
        log.info("blob cached", namespace=namespace, digest=digest, size=path.stat().st_size,
                 via="http" if why == "fallback" else "http-small",
                 seconds=round(time.monotonic() - start, 3), path=path)
        return path

    async def _verify_and_cache(
        self, namespace: str, digest: Digest, facts: TorrentFacts, downloaded: Path, metainfo: bytes,
        hashing: asyncio.Future[Digest] | None,
    ) -> Path:
        """sha256 of the whole file (from ``hashing``, the pieces hashed in order, if given),
        then the move into the cache (the torrent keeps seeding); the cache takes the file as
        verified, so its first read does not hash it again."""
        key = await asyncio.to_thread(file_key, downloaded)
        actual = await self._sha256(digest, downloaded, hashing)
        if actual != digest:
            log.error("downloaded blob does not match its digest; discarded", namespace=namespace,
                      digest=digest, actual=actual, size=facts.size)
            await self.session.remove(facts.info_hash, delete_files=True)
            downloaded.unlink(missing_ok=True)
            raise CorruptBlob(f"downloaded bytes of {digest} hash to {actual}")
        target = self.cas.path(digest)
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        # The metainfo first: from the moment the blob is in the cache, a delete or an
        # eviction must be able to find its torrent.
        await self.cas.write_meta(digest, METAINFO_META, metainfo)
        try:
            path = await self.session.move_storage(facts.info_hash, target.parent)
        except P2PError as e:
            await self.session.remove(facts.info_hash, delete_files=True)
            await asyncio.to_thread(self.cas.delete, digest)
            raise BlobUnavailable(f"could not move {digest} into the cache: {e}") from None
        await asyncio.to_thread(self.cas.adopt_verified, digest, key)
        self._info_hashes[digest] = facts.info_hash
        return path

    @staticmethod
    async def _sha256(digest: Digest, downloaded: Path, hashing: asyncio.Future[Digest] | None) -> Digest:
        """The in-order hash of the pieces, or a pass over the file if there is none (a single
        piece) or it failed (a piece read refused: the file is complete on disk anyway)."""
        if hashing is not None:
            try:
                return await hashing
            except P2PError as e:
                log.warning("hashing the pieces in order failed; hashing the file", digest=digest, error=str(e))
        return await hash_file(downloaded, digest.algorithm)

    def _seed_again(self, digest: Digest) -> None:
        """Seed a cached blob whose torrent left the session (idle, or an agent restart), in
        the background: a blob being pulled here is wanted, and its peers may need it too."""
        info_hash = self._info_hashes.get(digest)
        if digest in self._reseeding or (info_hash is not None and self.session.has(info_hash)):
            return
        self._reseeding.add(digest)
        task = self._tasks.spawn(self._reseed(digest), f"reseed:{digest.hex[:12]}")
        task.add_done_callback(lambda _: self._reseeding.discard(digest))

    async def _reseed(self, digest: Digest) -> None:
        metainfo = await self.cas.read_meta(digest, METAINFO_META)
        if metainfo is None:
            return
        info_hash = await asyncio.to_thread(metainfo_info_hash, metainfo)
        self._info_hashes[digest] = info_hash
        if self.session.has(info_hash):
            return
        try:
            await self.session.seed(metainfo, self.cas.path(digest), self.tracker.announce_url)
        except (P2PError, OSError, ValueError) as e:
            log.warning("cannot seed cached blob", digest=digest, error=str(e))
            return
        log.info("seeding cached blob again", digest=digest, info_hash=info_hash)

    def _seed_corrupt(self, info_hash: str, path: Path) -> None:
        """A peer's request found a piece of a cached blob we seed failing its hash (the
        session dropped the torrent): hash the file again, which quarantines it if it is bad,
        so the next read downloads a good copy instead of serving this one."""
        digest = self.cas.digest_of(path)
        if digest is not None:
            self._tasks.spawn(self.cas.recheck(digest), f"recheck:{digest.hex[:12]}")

    async def _drop_torrent(self, path: Path) -> None:
        """Stop seeding the file a corrupt cached blob was quarantined from (it is gone from
        the cache), so that the download that follows is not taken for complete."""
        for info_hash, seeded in self.session.torrents().items():
            if seeded == path:
                await self.session.remove(info_hash)

    async def delete(self, digest: Digest) -> bool:
        """Stop seeding the blob and remove it from the cache; False if it was not cached."""
        self._info_hashes.pop(digest, None)
        metainfo = await self.cas.read_meta(digest, METAINFO_META)
        if metainfo is not None:
            await self.session.remove(await asyncio.to_thread(metainfo_info_hash, metainfo))
        return await asyncio.to_thread(self.cas.delete, digest)


def _reset_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
