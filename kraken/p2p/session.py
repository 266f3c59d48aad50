"""The process's libtorrent session, driven from asyncio (agents and origins use it).

One :class:`P2PSession` per process (tests may run several in one process)::

    session = await P2PSession.start(config.p2p, metrics, role="agent")
    result = await session.download(metainfo, staging_dir, tracker_url, timeout=300)
    # ... verify the sha256 of result.path ...
    await session.move_storage(result.info_hash, cache_dir)     # keeps seeding from the cache
    ...
    await session.close()

API (coroutine methods run on the loop that called :meth:`P2PSession.start`):

- ``download(metainfo, save_dir, tracker_url, *, timeout) -> DownloadResult``: adds the
  torrent (started at once: not auto-managed, not paused, which saves 0.5-0.9 s) and returns
  when it is complete **on disk**: after ``torrent_finished`` *and then* ``cache_flushed``.
  At ``torrent_finished`` writes may still be queued; hashing the file then gave a wrong
  sha256 in 10-20% of runs (measured). The torrent then keeps seeding. A torrent or file
  error raises :class:`DownloadError`, the timeout :class:`DownloadTimeout` (a
  ``TimeoutError``); both remove the torrent and delete its partial file, so ``save_dir``
  must be a staging directory (libtorrent writes the file under its final name). Concurrent
  calls for one info-hash share the download; the torrent is dropped only when the last
  caller gives up (timeout or cancellation). A torrent already complete in this session
  returns at once (seconds=0, downloaded=0) with the path it is seeded from. Pieces failing
  their hash are counted and fetched again; they are not an error.
- ``seed(metainfo, path, tracker_url) -> info_hash``: seeds an existing complete file in
  seed mode: no up-front hashing, libtorrent hashes each piece the first time a peer asks
  for it. A piece failing that check means the file is corrupt: the torrent is removed and
  ``seeded file is corrupt`` is logged, so nothing bad is served. Idempotent per info-hash;
  calling it again counts as activity for idle removal. ``path.name`` may differ from the
  torrent's file name.
- ``move_storage(info_hash, new_dir) -> Path``: moves the file (a rename on one filesystem)
  and keeps seeding from there; returns after libtorrent's ``storage_moved`` alert. The
  alternative, ``remove()`` then ``seed()`` at the new path, also works but leaves a window
  with no seeding and hashes every piece again on first request.
- ``remove(info_hash, *, delete_files=False)``: drops the torrent (announces ``stopped``).
  Complete torrents are also removed automatically once they have uploaded nothing for
  ``seed_idle_time``; the file is left alone (it belongs to the caller's cache).
- ``read_piece(info_hash, index) -> bytes``: a piece's bytes once libtorrent verified it,
  while the torrent downloads (``hurry(info_hash, pieces)`` asks for those first); for
  streaming a blob as it arrives (:mod:`~kraken.p2p.piecereads`). ``download(...,
  on_added=...)`` is called once the torrent is in the session, so reads can start.
- ``set_origin_addresses({"ip:port", ...})``, ``torrents()``, ``listen_port``, ``tls_root``, ``close()``.

With ``p2p.tls`` (:mod:`kraken.p2p.tls`) the session listens for peers over TLS only, adds
every torrent paused, gives it the host's certificate and resumes it, and ``download`` and
``seed`` refuse (:class:`DownloadError`, logged as ``torrent refused``) a torrent not rooted
at its CA; without it they refuse SSL torrents.

Tracker URLs must have a path starting with ``/announce`` and no query arguments named like
libtorrent's own: libtorrent's SSRF mitigation refuses anything else on loopback.

Calls that wait for libtorrent's network thread (``status()``, ``get_peer_info()``), session
creation and teardown, and metainfo parsing run in worker threads; the rest (add, remove,
move, posting requests) only queue work for libtorrent and return at once. ``close()``
first pauses every torrent and waits (at most ~2.5 s) for the trackers to answer the
"stopped" announces, because the session's destructor would otherwise do that while
holding the GIL.

The session is composed of parts, each in its own module and owned by the session:
:mod:`~kraken.p2p.settings` (the settings pack, creating and destroying the libtorrent
session), :mod:`~kraken.p2p.alerts` (the alert pump: a pipe and ``loop.add_reader``, no
polling), :mod:`~kraken.p2p.torrents` (torrent records, adding and removing),
:mod:`~kraken.p2p.completion` (downloads completing on disk, moves, failures, re-checks after
lost alerts), :mod:`~kraken.p2p.stats` (metrics, attribution of bytes to sources, uploads),
:mod:`~kraken.p2p.shutdown` (the stopped announces at close) and :mod:`~kraken.p2p.events`
(alerts that are only logged); :mod:`~kraken.p2p.outcomes` holds ``DownloadResult`` and the
errors. All background tasks (samplers, completions, re-checks, the
stats loop) belong to the session's :class:`~kraken.tasks.TaskOwner` and are cancelled by
:meth:`P2PSession.close`.

Log lines (``p2p`` logger, ``local=<peer_ip or listen host>:<port>`` on each):
``Added new torrent``, ``peer connected``, ``peer disconnected``, ``Torrent complete``,
``torrent removed``, ``storage moved``; tracker errors are warnings (they are retried, and
some are harmless, e.g. an IPv6 socket skipping an IPv4 tracker).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import libtorrent as lt

from kraken.log import KrakenLogger, get_logger
from kraken.metrics import Metrics
from kraken.p2p.alerts import AlertPump
from kraken.p2p.attribution import SOURCES
from kraken.p2p.completion import Completion
from kraken.p2p.config import P2PConfig
from kraken.p2p.events import EventLog
from kraken.p2p.outcomes import DownloadError, DownloadResult, DownloadTimeout, P2PError
from kraken.p2p.piecereads import PieceReads
from kraken.p2p.settings import ORIGIN_PEER_ID_PREFIX, NativeSession, Role, create_session
from kraken.p2p.shutdown import StopAnnouncer
from kraken.p2p.stats import P2PMetrics, Stats
from kraken.p2p.tls import PeerTLS, refuse_ssl_torrent
from kraken.p2p.torrents import TorrentTable, parse_and_stat, parse_metainfo
from kraken.tasks import TaskOwner

__all__ = [
    "ORIGIN_PEER_ID_PREFIX", "DownloadError", "DownloadResult", "DownloadTimeout", "P2PError", "P2PSession", "Role",
]


class P2PSession:
    """The process's BitTorrent session; create it with :meth:`start`."""

    def __init__(
        self, config: P2PConfig, metrics: Metrics, native: NativeSession, pump: AlertPump, listen_port: int,
        tls: PeerTLS | None = None,
    ) -> None:
        self.config = config
        self.listen_port = listen_port
        self._tls = tls
        self._native = native
        self._pump = pump
        self._loop = asyncio.get_running_loop()
        self._tasks = TaskOwner("p2p")
        self._closed = False
        self._log: KrakenLogger = get_logger("p2p", local=f"{config.peer_ip or config.listen.host}:{listen_port}")
        p2p_metrics = P2PMetrics.register(metrics)
        self._metrics = p2p_metrics
        self._torrents = TorrentTable(config, native, p2p_metrics.active, self._log, tls)
        self._stats = Stats(config, p2p_metrics, self._torrents, self._tasks, self._log)
        self._completion = Completion(config, self._torrents, self._stats, self._tasks, self._log)
        self._shutdown = StopAnnouncer(native, self._log)
        self._pieces = PieceReads(self._torrents)
        for part in (
            self._torrents, self._stats, self._completion, self._shutdown, self._pieces,
            EventLog(self._torrents, self._log),
        ):
            pump.subscribe(part.alert_handlers())

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def start(cls, config: P2PConfig, metrics: Metrics | None = None, *, role: Role = "agent") -> P2PSession:
        """Create the session, listening on ``config.listen``; raises :class:`P2PError` if it cannot."""
        tls = None
        if config.tls.enabled:
            try:
                tls = await asyncio.to_thread(PeerTLS.load, config.tls)
            except ValueError as e:
                raise P2PError(f"P2P session cannot use p2p.tls: {e}") from None
        pump = AlertPump()
        try:
            native, port, failures = await asyncio.to_thread(create_session, config, role)
        except BaseException:
            pump.close()
            raise
        try:
            if not port:
                reason = "; ".join(failures) or "no listen socket"
                raise P2PError(f"P2P session cannot listen on {config.listen_interfaces()}: {reason}")
            self = cls(config, metrics or Metrics("p2p"), native, pump, port, tls)
        except BaseException:  # e.g. these metrics are already registered on that registry
            await native.destroy()
            pump.close()
            raise
        pump.start(native, self._log)
        self._tasks.spawn(self._stats_loop(), "stats")
        self._log.info("P2P session started", role=role, listen=config.listen_interfaces(), port=port,
                       tls=tls is not None)
        return self

    async def close(self) -> None:
        """Stop everything; the session is torn down in a worker thread (it joins libtorrent's threads)."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.close()
        handles = self._torrents.handles()
        if handles:
            await self._shutdown.announce_stopped(handles)
        self._pump.stop()
        self._torrents.close()
        await self._native.destroy()
        # Only now: libtorrent may write to the pipe until its session is gone.
        self._pump.close()
        self._log.info("P2P session closed")

    async def _stats_loop(self) -> None:
        """Refresh upload counters (state_update alerts) and remove idle seeds."""
        while True:
            await asyncio.sleep(self.config.stats_interval)
            self._native.get().post_torrent_updates()
            self._torrents.remove_idle()

    @property
    def alert_fds(self) -> tuple[int, int]:
        """The alert pipe's (read, write) descriptors; closed by :meth:`close`."""
        return self._pump.fds

    @property
    def on_seed_corrupt(self) -> Callable[[str, Path], None] | None:
        """Called with the info-hash and file of a seeded torrent whose file failed a piece
        hash (the torrent is being removed): the owner of the file checks and replaces it."""
        return self._completion.on_seed_corrupt

    @on_seed_corrupt.setter
    def on_seed_corrupt(self, callback: Callable[[str, Path], None] | None) -> None:
        self._completion.on_seed_corrupt = callback

    @property
    def tls_root(self) -> str:
        """The CA an origin embeds in the metainfo it generates (PEM); empty without ``p2p.tls``."""
        return self._tls.root_pem if self._tls is not None else ""

    def set_origin_addresses(self, addresses: set[str]) -> None:
        """P2P ``ip:port`` addresses of the origins, for attributing downloaded bytes."""
        self._stats.set_origin_addresses(addresses)

    def handle(self, info_hash: str) -> lt.torrent_handle | None:
        """libtorrent's handle of a torrent in the session, for :mod:`kraken.p2p.shares` to
        look at and steer; ``None`` once it left the session."""
        rec = self._torrents.get(info_hash)
        return None if rec is None else rec.handle

    def hurrying(self, info_hash: str) -> bool:
        """Whether a streaming reader's window owns the download's priorities
        (:mod:`kraken.p2p.piecereads`): steering must not change them meanwhile."""
        rec = self._torrents.get(info_hash)
        return rec is not None and rec.hurried and not rec.swarmed

    def shared(self, info_hash: str) -> None:
        """Other agents download the same torrent: no more hurrying a reader's window, the
        swarm's priorities (:mod:`kraken.p2p.shares`) again."""
        rec = self._torrents.get(info_hash)
        if rec is not None:
            self._pieces.swarmed(rec)

    def downloaded(self, info_hash: str) -> int | None:
        """Payload bytes a download in progress has received (as last sampled, so it moves in
        steps of ``stats_interval`` at most); ``None`` if it is not downloading here."""
        rec = self._torrents.get(info_hash)
        if rec is None or rec.seeding:
            return None
        return sum(rec.attribution.by_source.values())

    def has(self, info_hash: str) -> bool:
        """Whether the torrent is in the session (downloading or seeding)."""
        return self._torrents.get(info_hash) is not None

    def torrents(self) -> dict[str, Path]:
        """Info-hash -> file path of every torrent in the session."""
        return {rec.info_hash: rec.path for rec in self._torrents.records()}

    # ---------------------------------------------------------------- operations

    async def download(
        self, metainfo: bytes, save_dir: Path, tracker_url: str, *, timeout: float,
        piece_priorities: list[int] | None = None, on_added: Callable[[], None] | None = None,
    ) -> DownloadResult:
        """Download the torrent into ``save_dir`` and keep seeding it (see the module docstring).

        ``piece_priorities`` (libtorrent's 1..7, one per piece) orders which pieces are asked
        for first (:mod:`kraken.p2p.shares`); a torrent already downloading keeps its order.
        ``on_added`` is called once the torrent is in the session (new or joined), before
        waiting for it: :meth:`read_piece` can be used from then on."""
        self._check_open()
        ti = await asyncio.to_thread(parse_metainfo, metainfo)
        self._check_open()
        self._check_tls(ti)
        info_hash = str(ti.info_hashes().v1)
        rec = self._torrents.get(info_hash)
        if rec is None:
            rec = self._torrents.add(ti, save_dir, tracker_url, seed=False, piece_priorities=piece_priorities)
            self._stats.start_sampling(rec)
        elif rec.seeding:
            rec.last_activity = time.monotonic()
            return DownloadResult(info_hash, rec.path, rec.size, 0.0, 0, 0, dict.fromkeys(SOURCES, 0), 0)
        assert rec.done is not None
        if on_added is not None:
            on_added()
        rec.waiters += 1
        try:
            return await asyncio.wait_for(asyncio.shield(rec.done), timeout)
        except TimeoutError:
            if rec.finalizing and self._torrents.holds(rec):
                # Complete on disk already, only the bookkeeping is left: do not waste it.
                return await asyncio.shield(rec.done)
            if rec.waiters == 1 and self._torrents.holds(rec):
                self._metrics.downloads.labels("timeout").inc()
                await self._torrents.await_removal(
                    self._torrents.start_removal(rec, delete_files=True, reason="timeout")
                )
            raise DownloadTimeout(f"torrent {rec.name} ({info_hash}) not complete after {timeout:g}s") from None
        except DownloadError:
            if rec.removal is not None:
                await self._torrents.await_removal(rec.removal)
            raise
        except asyncio.CancelledError:
            if rec.waiters == 1 and self._torrents.holds(rec) and not rec.seeding:
                self._torrents.start_removal(rec, delete_files=True, reason="abandoned")
            raise
        finally:
            rec.waiters -= 1

    async def read_piece(self, info_hash: str, index: int) -> bytes:
        """Piece ``index`` of the torrent, once verified (at once if it is); P2PError if the
        torrent is not in the session or leaves it meanwhile."""
        return await self._pieces.read(self._torrents.require(info_hash), index)

    def hurry(self, info_hash: str, pieces: range) -> None:
        """Request ``pieces`` of a download before any other (a streaming reader's window)."""
        rec = self._torrents.get(info_hash)
        if rec is not None:
            self._pieces.hurry(rec, pieces)

    async def seed(self, metainfo: bytes, path: Path, tracker_url: str) -> str:
        """Seed the complete file at ``path`` without hashing it first; returns the info-hash."""
        self._check_open()
        ti, size = await asyncio.to_thread(parse_and_stat, metainfo, path)
        self._check_open()
        self._check_tls(ti)
        if size != ti.total_size():
            raise ValueError(f"{path}: {size} bytes, the metainfo describes {ti.total_size()}")
        info_hash = str(ti.info_hashes().v1)
        rec = self._torrents.get(info_hash)
        if rec is None:
            self._torrents.add(ti, path.parent, tracker_url, seed=True, file_name=path.name)
        else:
            rec.last_activity = time.monotonic()
        return info_hash

    async def move_storage(self, info_hash: str, new_dir: Path) -> Path:
        """Move the torrent's file into ``new_dir`` and keep seeding it from there."""
        rec = self._torrents.require(info_hash)
        if rec.move is not None:
            raise P2PError(f"torrent {rec.name} is already being moved")
        rec.move = self._loop.create_future()
        rec.move_target = new_dir
        rec.handle.move_storage(str(new_dir), lt.move_flags_t.always_replace_files)
        try:
            await asyncio.shield(rec.move)
        finally:
            rec.move = None
            rec.move_target = None
        return rec.path

    async def remove(self, info_hash: str, *, delete_files: bool = False) -> None:
        """Remove the torrent (a no-op if it is not in the session)."""
        rec = self._torrents.get(info_hash)
        if rec is None:
            return
        try:
            status = await asyncio.to_thread(rec.handle.status)
        except RuntimeError:  # the torrent went away meanwhile
            return
        if not self._torrents.holds(rec):
            return
        self._stats.account_upload(rec, status.total_payload_upload)
        await self._torrents.await_removal(
            self._torrents.start_removal(rec, delete_files=delete_files, reason="requested")
        )

    def _check_tls(self, ti: lt.torrent_info) -> None:
        """DownloadError (logged) unless the torrent suits ``p2p.tls``: with it, an SSL
        torrent rooted at this host's CA; without it, an ordinary torrent (an SSL torrent
        could not be joined without a certificate)."""
        try:
            if self._tls is not None:
                self._tls.check(ti)
            else:
                refuse_ssl_torrent(ti)
        except ValueError as e:
            self._log.error("torrent refused", name=ti.name(), info_hash=str(ti.info_hashes().v1), error=str(e))
            raise DownloadError(f"torrent {ti.name()} refused: {e}") from None

    def _check_open(self) -> None:
        if self._closed:
            raise P2PError("P2P session closed")
