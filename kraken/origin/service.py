"""What stands behind the origin's HTTP API: the blob cache and the work around it.

A pushed blob is committed to the content-addressed store (digest verified), a durable
write-back to its namespace's backend is queued, copies to the other ring owners are queued,
and its torrent metainfo is generated once, in the background, and kept beside the blob. A
blob the cache lacks is fetched lazily from the backend. A periodic sweep evicts idle blobs,
but never one whose write-back or replication is still pending.

A blob also becomes part of a namespace without being uploaded to it: a client told by a HEAD
that the namespace has it (the check before a push, a cross-repository mount, a manifest's
references) skips the upload. Since backends are chosen per namespace, such an answer from the
cache queues a write-back to that namespace's backend as an upload would
(:meth:`OriginService.find`).

The origin seeds blobs to agents over BitTorrent (one :class:`~kraken.p2p.P2PSession`,
listening on ``p2p.listen``). A blob is seeded once its metainfo is asked for: the tracker
asks when an agent is about to download the blob, and agents learn this origin's P2P address
from the tracker's ``origin_p2p`` map, so the origin need not announce (``tracker.addr``
optional). With ``seed_on_commit`` a pushed blob is seeded at once. Seeding is in seed mode
from the cache file itself (no copy, no up-front hashing) and ends when the torrent has
uploaded nothing for ``p2p.seed_idle_time``. A seeded blob is never evicted: the sweep
counts it as protected, like a pending write-back, since deleting the file under libtorrent
would make it fail the agents downloading it.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from kraken.backend import BackendRouter, build_router
from kraken.core.digest import Digest
from kraken.core.memo import RecentSet
from kraken.core.metainfo import EmptyBlobError, generate_metainfo, piece_length_for
from kraken.http.client import HttpClient, create_client
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.cleanup import OriginCleanup
from kraken.origin.config import OriginConfig
from kraken.origin.fetch import BackendFetcher
from kraken.origin.foreground import ForegroundGate
from kraken.origin.remote import RemoteCopies
from kraken.origin.replication import Replicator
from kraken.origin.writeback import WriteBack
from kraken.p2p import P2PError, P2PSession
from kraken.p2p.announcerelay import announce_url
from kraken.p2p.trackers import TrackerList
from kraken.persisted import PersistedQueue
from kraken.ring import HashRing
from kraken.store.cas import QUARANTINED_HELP, CAStore
from kraken.tasks import SingleFlight, TaskOwner

log = get_logger("origin")

METAINFO = "metainfo"


def metainfo_name(root_cert: str) -> str:
    """The store's name for a blob's metainfo: with ``p2p.tls`` one per embedded CA, so a
    metainfo generated without the CA (or with another one) is never handed out."""
    if not root_cert:
        return METAINFO
    return f"{METAINFO}-tls-{hashlib.sha256(root_cert.encode()).hexdigest()[:16]}"


#: How many (namespace, digest) pairs the origin remembers having queued a write-back for, so
#: that repeated reads of a blob in a namespace skip the SQLite insert. Forgetting a pair (a
#: restart, or more pairs than this) only costs one redundant task: the write-back worker
#: stats the backend first and stops there when it has the blob.
NAMESPACE_MEMO_SIZE = 100_000


class Fetching(Exception):
    """The blob is being fetched from the backend: ask again shortly (HTTP 202)."""


class NotFound(Exception):
    """Neither the cache nor the backend has the blob (HTTP 404)."""


class SeedError(Exception):
    """The blob cannot be seeded (HTTP 503): its metainfo is withheld, so that the tracker
    does not send agents to an origin that will not serve them."""


@dataclass
class _Running:
    """What exists only while the origin runs (opened in :meth:`OriginService.lifecycle`)."""

    store: CAStore
    router: BackendRouter
    http: HttpClient
    writeback: WriteBack
    replicator: Replicator
    fetcher: BackendFetcher
    cleanup: OriginCleanup
    #: Where libtorrent announces seeded blobs ("" when the origin does not announce).
    announce_url: str
    remote_copies: RemoteCopies


class OriginService:
    """Made from the config when the app is built (no I/O); :meth:`lifecycle`, the app's
    cleanup context, opens the store, queues, backends and P2P session and closes them."""

    def __init__(self, config: OriginConfig, metrics: Metrics) -> None:
        self.config = config
        self.identity = config.identity()
        self.ring = HashRing.from_config(config.ring)
        self.owner = TaskOwner("origin")
        self._metrics = metrics
        self._running: _Running | None = None
        # Digests between "commit started" and "write-back queued": protected from eviction.
        self._committing: Counter[Digest] = Counter()
        self._metainfo_jobs: SingleFlight[Digest, bytes] = SingleFlight(self.owner, "metainfo")
        self.foreground = ForegroundGate(config.background)
        # Set while the origin runs: None before and after.
        self.p2p: P2PSession | None = None
        # Digests on their way into the P2P session, and the info-hash -> digest of each blob
        # handed to it (stale once the session dropped the torrent as idle): both protected
        # from eviction.
        self._seed_starting: Counter[Digest] = Counter()
        self._seeded: dict[str, tuple[Digest, str]] = {}  # info-hash -> (digest, namespace)
        self._root_cert = ""  # the CA embedded in generated metainfo (p2p.tls), set once P2P starts
        # (namespace, digest) pairs whose write-back is queued (or done), and the insert of
        # each pair under way, which concurrent requests for the same pair share.
        self._in_namespace: RecentSet[tuple[str, Digest]] = RecentSet(NAMESPACE_MEMO_SIZE)
        self._queueing: SingleFlight[tuple[str, Digest], None] = SingleFlight(self.owner, "queue-writeback")
        self._uploads = metrics.counter("kraken_origin_uploads_total", "Blobs committed by upload", ["source"])

    @property
    def running(self) -> _Running:
        if self._running is None:
            raise RuntimeError("origin not started")
        return self._running

    @property
    def store(self) -> CAStore:
        return self.running.store

    @property
    def writeback(self) -> WriteBack:
        return self.running.writeback

    @property
    def replicator(self) -> Replicator:
        return self.running.replicator

    @property
    def fetcher(self) -> BackendFetcher:
        return self.running.fetcher

    @property
    def remote_copies(self) -> RemoteCopies:
        return self.running.remote_copies

    @property
    def cleanup(self) -> OriginCleanup:
        return self.running.cleanup

    async def lifecycle(self, _: web.Application) -> AsyncIterator[None]:
        """Open everything, each close registered as soon as the thing exists, so a failed
        start closes what already started; close in reverse order at shutdown."""
        config, metrics = self.config, self._metrics
        root = Path(config.store.root)
        async with AsyncExitStack() as stack:
            quarantined = metrics.counter("kraken_origin_blobs_quarantined_total", QUARANTINED_HELP)
            store = await asyncio.to_thread(CAStore, root, True, quarantined)
            router = await build_router(config.backends, config.auth, config.http_client, config.tls)
            stack.push_async_callback(router.close)
            # Every origin on the ring moves blobs to and from the same stores: each gets its share.
            router.adjust_bandwidth(len(self.ring.hosts) or 1)
            http = create_client(config.http_client, config.tls)
            stack.push_async_callback(http.close)
            writeback_queue = await PersistedQueue.open(root / "writeback.db")
            stack.push_async_callback(writeback_queue.close)
            replication_queue = await PersistedQueue.open(root / "replication.db")
            stack.push_async_callback(replication_queue.close)
            writeback = WriteBack(writeback_queue, store, router, config.writeback, metrics, root / "fetch",
                                  self.foreground)
            replicator = Replicator(replication_queue, store, self.ring, self.identity, http, config.replication,
                                    metrics, self.foreground)
            fetcher = BackendFetcher(
                store, router, self.owner, metrics, config.fetch.concurrency, on_fetched=self._start_metainfo,
                peers=lambda d: [h for h in self.ring.owners(d) if h != self.identity], http=http,
                on_repaired=writeback.enqueue,
            )
            # Before the session, so the relay (HTTPS or several trackers) outlives its stopped announces.
            announce = ""
            if config.tracker.configured():
                trackers = TrackerList(config.tracker, metrics)
                await trackers.start()
                announce = await announce_url(stack, trackers, http, config.http_client, config.tls,
                                              config.p2p.listen.host, metrics)
            self._running = _Running(store, router, http, writeback, replicator, fetcher,
                                     OriginCleanup(store, self._protected, config.cleanup, metrics), announce,
                                     RemoteCopies(self.owner, http))
            stack.callback(setattr, self, "_running", None)
            # First: an origin that cannot listen for peers fails to start (agents are sent to
            # that port by the tracker) before it has started any other work.
            self.p2p = await P2PSession.start(config.p2p, metrics, role="origin")
            stack.push_async_callback(self._close_p2p, self.p2p)
            self._root_cert = self.p2p.tls_root
            self.p2p.on_seed_corrupt = self._seed_corrupt
            stack.push_async_callback(self.owner.close)
            await self._start(self.p2p.listen_port)
            yield

    async def readiness(self) -> None:
        """Ready once started and while every backend marked ``must_ready`` answers its probe
        (503 naming each that does not; :meth:`BackendRouter.check_ready`)."""
        await self.running.router.check_ready()

    async def _close_p2p(self, session: P2PSession) -> None:
        self.p2p = None
        await session.close()

    async def _start(self, p2p_port: int) -> None:
        """The background work, once every part exists."""
        await self.fetcher.start()
        removed = await asyncio.to_thread(self.store.clear_uploads)
        if removed:
            log.info("partial uploads of a previous run removed", count=removed)
        self.writeback.worker.start(self.owner)
        self.replicator.worker.start(self.owner)
        self.owner.spawn(self.cleanup.run(), "cleanup")
        log.info(
            "origin started",
            identity=self.identity,
            root=str(self.store.root),
            ring=",".join(self.ring.hosts),
            p2p_port=p2p_port,
            tracker=",".join(self.config.tracker.static()) or self.config.tracker.dns or "-",
        )

    # ---- uploads -------------------------------------------------------------------------

    async def start_upload(self, namespace: str, digest: Digest, replica: bool) -> str | None:
        """A new upload id, or None if the blob is already cached (HTTP 409).

        A client pushing a cached blob to another namespace still expects it in that
        namespace's backend, so the write-back is queued anyway (it is cheap when the backend
        already has the blob).
        """
        self.writeback.check_writable(namespace)
        if await self._cached_in_namespace(namespace, digest, replica):
            return None
        return self.store.create_upload()

    async def start_stream(self) -> str:
        """An upload whose digest is named only at commit (see the origin's stream routes)."""
        return self.store.create_upload()

    async def write(self, uid: str, chunks: AsyncIterable[bytes], offset: int | None) -> int:
        with self.foreground.transfer():
            return await self.store.write(uid, chunks, offset)

    async def commit(self, namespace: str, digest: Digest, uid: str, replica: bool) -> bool:
        """Verify and cache the upload; False if the blob was cached already (HTTP 409).
        Bytes that do not hash to ``digest`` raise DigestMismatch (HTTP 400) either way: a
        proxy relies on this answer to refuse a wrong upload (it does not hash uploads
        itself, see kraken.registry.uploads)."""
        self.writeback.check_writable(namespace)
        with self.foreground.transfer():
            if await self._cached_in_namespace(namespace, digest, replica):
                await self.store.discard_checked(uid, digest)
                return False
            self._committing[digest] += 1
            try:
                await self.store.commit(uid, digest)
                await self._queue_writeback(namespace, digest, replica)
            finally:
                self._committing[digest] -= 1
                if self._committing[digest] <= 0:
                    del self._committing[digest]
        if not replica:
            await self.replicator.enqueue(namespace, digest)
        self._start_metainfo(digest)
        if self.config.seed_on_commit and self.store.size(digest):
            self.owner.spawn(self._seed_committed(namespace, digest), f"seed:{digest}")
        self._uploads.labels("replica" if replica else "push").inc()
        log.info("blob committed", namespace=namespace, digest=digest, replica=replica)
        return True

    async def _cached_in_namespace(self, namespace: str, digest: Digest, replica: bool = False) -> bool:
        """Whether the cache has ``digest`` and may answer for it in ``namespace``.

        An answer saying the namespace has the blob (a HEAD's 200, an upload's 409) makes it
        part of the namespace (the client will not upload it there), so the first such answer
        per (namespace, digest) queues a write-back to the namespace's backend before it goes
        out; the memo keeps later ones off SQLite.

        A sweep that read the queues just before that task was added may still evict the
        blob: touching it makes a sweep still to come keep it (a sweep skips blobs read since
        its scan), and looking again catches one that already deleted it, which is then
        answered as a blob the cache lacks.
        """
        if await self.store.verified_path(digest) is None:
            return False
        key = (namespace, digest)
        if self._in_namespace.hit(key):
            return True
        started = await self._queue_writeback(namespace, digest, replica)
        self.store.touch(digest)
        if self.store.exists(digest):
            if started:
                log.info("cached blob joined a namespace, write-back queued", namespace=namespace, digest=digest)
            return True
        self._in_namespace.discard(key)
        return False

    async def _queue_writeback(self, namespace: str, digest: Digest, replica: bool) -> bool:
        """Durably queue the write-back of ``digest`` to ``namespace``'s backend and remember
        the pair. Concurrent callers share one insert (and its delay); True for the caller
        that started it."""
        key = (namespace, digest)
        started = key not in self._queueing
        delay = self.config.replication.writeback_delay if replica else 0.0
        await self._queueing.run(key, lambda: self._add_writeback(key, delay))
        return started

    async def _add_writeback(self, key: tuple[str, Digest], delay: float) -> None:
        await self.writeback.enqueue(*key, delay)
        self._in_namespace.add(key)

    # ---- reads ---------------------------------------------------------------------------

    async def find(self, namespace: str, digest: Digest, *, existence_check: bool = False) -> Path:
        """The cached blob's path (its content checked, see CAStore.verified_path); fetches
        it from the backend if the cache lacks it or its cached copy turned out corrupt.

        ``existence_check`` marks a HEAD, the check that makes clients skip an upload: a
        cached blob found that way is added to ``namespace`` (its write-back queued, see
        :meth:`_cached_in_namespace`), since only the namespace's backend can serve it there
        once the cache has evicted it. Reads need not: every path that puts a blob into a
        namespace (a push's check, a mount, a manifest's references, a client's GET through
        the proxy) HEADs it first, and a GET stays free of any queue work.

        Raises :class:`Fetching` while a fetch runs, :class:`NotFound` if the backend lacks
        the blob, and ``BackendError`` if the backend cannot be asked.
        """
        if existence_check:
            cached = await self._cached_in_namespace(namespace, digest)
        else:
            cached = await self.store.verified_path(digest) is not None
        if cached:
            return self.store.path(digest)
        if not await self.fetcher.request(namespace, digest):
            raise NotFound(f"{digest} is not in namespace {namespace!r}")
        raise Fetching(str(digest))

    async def metainfo(self, namespace: str, digest: Digest) -> bytes:
        """The blob's torrent, once the blob is being seeded.

        The tracker asks for a blob's metainfo when an agent is about to download it, which
        makes this the moment to start seeding. Raises like :meth:`find`, EmptyBlobError for
        a zero-byte blob and :class:`SeedError` when the blob cannot be seeded.
        """
        with self._seed_guard(digest):
            await self._find_protected(namespace, digest)
            data = await self.store.read_meta(digest, metainfo_name(self._root_cert))
            if data is None:
                if self.store.size(digest) == 0:
                    raise EmptyBlobError(f"{digest} is empty")
                data = await self._metainfo_jobs.run(digest, lambda: self._generate_metainfo(digest))
            await self._seed(namespace, digest, data)
        return data

    async def _find_protected(self, namespace: str, digest: Digest) -> None:
        """:meth:`find` for a caller that marked ``digest`` with :meth:`_seed_guard`.

        A sweep that read the protected set before the mark may still evict the blob:
        touching it makes a sweep that listed the cache earlier skip it (a sweep keeps blobs
        read since its scan), and looking again catches one that already deleted it, which
        is then fetched like any blob the cache lacks.
        """
        await self.find(namespace, digest)
        self.store.touch(digest)
        if not self.store.exists(digest):
            await self.find(namespace, digest)

    @contextmanager
    def _seed_guard(self, digest: Digest) -> Iterator[None]:
        """Protect ``digest`` from eviction while it is being handed to the P2P session."""
        self._seed_starting[digest] += 1
        try:
            yield
        finally:
            self._seed_starting[digest] -= 1
            if self._seed_starting[digest] <= 0:
                del self._seed_starting[digest]

    async def _seed(self, namespace: str, digest: Digest, metainfo: bytes) -> None:
        """Seed the cached blob (idempotent; again counts as activity for idle removal)."""
        if self.p2p is None:
            raise SeedError("the P2P session is not running")
        try:
            info_hash = await self.p2p.seed(metainfo, self.store.path(digest), self.running.announce_url)
        except (P2PError, ValueError, OSError) as e:
            log.error("cannot seed blob", digest=digest, error=f"{type(e).__name__}: {e}")
            raise SeedError(f"cannot seed {digest}: {e}") from e
        if info_hash not in self._seeded:
            self._seeded[info_hash] = (digest, namespace)
            log.info("seeding blob", digest=digest, info_hash=info_hash)

    async def _seed_committed(self, namespace: str, digest: Digest) -> None:
        """``seed_on_commit``: seed a blob just pushed, once its metainfo is generated."""
        with self._seed_guard(digest):
            self.store.touch(digest)  # see _find_protected
            if not self.store.exists(digest):
                return
            await self.foreground.lull()
            data = await self._metainfo_jobs.run(digest, lambda: self._generate_metainfo(digest))
            with suppress(SeedError):  # logged; the tracker's metainfo request tries again
                await self._seed(namespace, digest, data)

    def _seeded_digests(self) -> set[Digest]:
        """Digests being seeded or about to be; forgets torrents the session dropped as idle."""
        torrents = self.p2p.torrents() if self.p2p is not None else {}
        for info_hash in [ih for ih in self._seeded if ih not in torrents]:
            del self._seeded[info_hash]
        return set(self._seed_starting) | {digest for digest, _ in self._seeded.values()}

    def _seed_corrupt(self, info_hash: str, _path: Path) -> None:
        """The P2P session found a piece of a seeded file failing its hash (and dropped the
        torrent): hash the cache file again, which quarantines it if it is bad. The next
        request for the blob (an agent's HTTP fallback, a metainfo request) then finds it
        missing and fetches a good copy, which is what gets seeded from then on."""
        seeded = self._seeded.pop(info_hash, None)
        if seeded is not None:
            digest, _ = seeded
            self.owner.spawn(self.store.recheck(digest), f"recheck:{digest}")

    def _start_metainfo(self, digest: Digest) -> None:
        """Generate a new blob's metainfo in the background, so it is ready when peers ask,
        once uploads allow (kraken.origin.foreground) and the blob's first write-back attempt
        ended (at most ``background.max_wait`` later); a request for it meanwhile generates it
        at once, and this then finds it done."""
        if self.store.size(digest):
            self.owner.spawn(self._metainfo_after_lull(digest), f"metainfo:{digest}")

    async def _metainfo_after_lull(self, digest: Digest) -> None:
        await self.foreground.lull()
        # A new blob's upload to its backend goes first (see kraken.origin.writeback).
        await self.writeback.first_attempt(digest, self.config.background.max_wait)
        if self.store.exists(digest):
            await self._metainfo_jobs.run(digest, lambda: self._generate_metainfo(digest))

    async def _generate_metainfo(self, digest: Digest) -> bytes:
        """The one generation of ``digest``'s metainfo (a single flight: concurrent callers
        and the background start share it)."""
        root_cert = self._root_cert
        name = metainfo_name(root_cert)
        cached = await self.store.read_meta(digest, name)
        if cached is not None:
            return cached
        path = self.store.path(digest)
        size = (await asyncio.to_thread(path.stat)).st_size
        piece_length = piece_length_for(size, self.config.metainfo.piece_lengths)
        data = await asyncio.to_thread(generate_metainfo, path, digest.hex, piece_length, root_cert)
        await self.store.write_meta(digest, name, data)
        log.info("metainfo generated", digest=digest, size=size, piece_length=piece_length, tls=bool(root_cert))
        return data

    def owners(self, digest: Digest) -> list[str]:
        return self.ring.owners(digest)

    # ---- eviction ------------------------------------------------------------------------

    async def _protected(self) -> set[Digest]:
        """What eviction must keep. Order matters (see kraken.origin.cleanup): the committing
        set is read before the queues."""
        protected = set(self._committing) | self._seeded_digests()
        protected |= await self.writeback.pending_digests()
        protected |= await self.replicator.pending_digests()
        return protected
