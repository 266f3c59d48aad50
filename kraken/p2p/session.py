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
- ``set_origin_addresses({"ip:port", ...})``, ``torrents()``, ``listen_port``, ``close()``.

Tracker URLs must have a path starting with ``/announce`` and no query arguments named like
libtorrent's own: libtorrent's SSRF mitigation refuses anything else on loopback.

Settings applied to every session, each for a measured reason: several connections per IP
(dev peers share 127.0.0.1 and libtorrent would otherwise collapse them); TCP only (uTP
moved ~7 MB/s on loopback); no DHT/LSD/UPnP/NAT-PMP (the tracker is the peer source);
``min_announce_interval`` from the config (libtorrent floors the tracker's interval at
300 s); a peer-class filter putting every address in the global class (libtorrent exempts
loopback and private ranges from rate limits and unchoke slots by default); a 50 ms tick
(rate-limit quota is handed out per tick); no smart_ban plugin (it blames corrupt blocks by
IP address, which banned the origin where peers share one); a listen port that fails when
taken instead of silently moving.

Alerts reach asyncio without polling: libtorrent writes a byte to a non-blocking pipe when
its alert queue becomes non-empty (``set_alert_fd``), ``loop.add_reader`` wakes the loop,
and the reader drains the pipe and then ``pop_alerts()``. Alert objects are only valid until
the next ``pop_alerts()``, so handlers copy what they need at once. If the queue overflows,
pending downloads and moves are re-checked from the torrent status, so none hangs on a lost
alert.

Calls that wait for libtorrent's network thread (``status()``, ``get_peer_info()``), session
creation and teardown, and metainfo parsing run in worker threads; the rest (add, remove,
move, posting requests) only queue work for libtorrent and return at once. ``close()``
first pauses every torrent and waits (at most ~2.5 s) for the trackers to answer the
"stopped" announces, because the session's destructor would otherwise do that while
holding the GIL.

A single-piece download starts with one connection: libtorrent is in end-game mode from its
first request (every piece is then being downloaded), so a second seeder connected at once
was asked for the same blocks and a 289-byte manifest arrived twice (measured: 578 bytes
downloaded with an origin and an agent seeding). If it receives nothing for
:data:`_SINGLE_PIECE_GRACE` (a silent or useless first peer), and in any case once complete
(it then seeds), it is opened to ``connections_per_torrent`` peers like any other.

Attribution of downloaded bytes to origins or other agents: see
:mod:`kraken.p2p.attribution`. A connection is an origin's when its ``ip:port`` is in
:meth:`set_origin_addresses` or its peer id starts with :data:`ORIGIN_PEER_ID_PREFIX`
(sessions started with ``role="origin"`` use that prefix); the second also covers
connections an origin opened itself, whose remote port is ephemeral.

Metrics (registered on the given :class:`~kraken.metrics.Metrics`, one session per registry):
``kraken_p2p_download_bytes_total{source}`` (origin|peer),
``kraken_p2p_upload_bytes_total``, ``kraken_p2p_download_seconds``,
``kraken_p2p_downloads_total{result}`` (complete|timeout|error),
``kraken_p2p_active_torrents``, ``kraken_p2p_hash_failures_total``.

Log lines (``p2p`` logger, ``local=<peer_ip or listen host>:<port>`` on each):
``Added new torrent``, ``peer connected``, ``peer disconnected``, ``Torrent complete``,
``torrent removed``, ``storage moved``; tracker errors are warnings (they are retried, and
some are harmless, e.g. an IPv6 socket skipping an IPv4 tracker).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import libtorrent as lt

from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.p2p.attribution import ORIGIN, PEER, SOURCES, PeerSample, SourceAttribution
from kraken.p2p.config import P2PConfig
from kraken.tasks import TaskOwner

Role = Literal["agent", "origin"]

ORIGIN_PEER_ID_PREFIX = b"-KO"
_PEER_FINGERPRINTS: dict[str, str] = {"origin": "-KO0100-", "agent": "-KA0100-"}

_CATEGORY = lt.alert.category_t
_ALERT_MASK = (
    _CATEGORY.error_notification
    | _CATEGORY.status_notification
    | _CATEGORY.tracker_notification
    | _CATEGORY.connect_notification
    | _CATEGORY.peer_notification
    | _CATEGORY.storage_notification
)
# libtorrent answers a removal with an alert within milliseconds; this bound only matters
# if that alert was lost to a queue overflow.
_REMOVAL_TIMEOUT = 10.0
# How long close() lets "stopped" announces take: best effort, the tracker expires peers anyway.
_STOP_TRACKER_TIMEOUT = 2
# libtorrent hands out rate-limit quota once per tick, and every message of a rate-limited
# connection waits for quota. Measured with a 2 MiB/s cap, 6 MiB took 4.5 s at the default
# 500 ms tick, 3.6 s at 100 ms and 3.0 s at 50 ms; idle CPU with 200 seeding torrents went
# from 0.10% to 0.17%.
_TICK_INTERVAL_MS = 50
# Delay before the first per-peer sample of a download (then doubling to stats_interval).
_FIRST_SAMPLE_DELAY = 0.01
# How long a single-piece download may receive nothing on its one connection before it is
# opened to more peers (checked at each attribution sample, so about 0.6 s in practice).
_SINGLE_PIECE_GRACE = 0.5
# libtorrent::errors::self_connection (its error enum is part of the ABI).
_SELF_CONNECTION = 47


class P2PError(Exception):
    """The session could not do what was asked (listen, add, move, ...)."""


class DownloadError(P2PError):
    """A download failed (torrent or file error, removed, session closed)."""


class DownloadTimeout(DownloadError, TimeoutError):
    """A download did not complete within its timeout."""


@dataclass(frozen=True)
class DownloadResult:
    """A complete download; ``path`` is flushed to disk and the torrent is seeding."""

    info_hash: str
    path: Path
    size: int
    seconds: float
    downloaded: int  # payload bytes received, pieces fetched again after a hash failure included
    uploaded: int  # payload bytes sent to other peers while downloading
    downloaded_by_source: dict[str, int]  # {"origin": n, "peer": m}, adds up to `downloaded`
    hash_failures: int


@dataclass(eq=False)
class _Stopping:
    """close() waiting for every torrent to pause and for the answers to its stopped announces."""

    unpaused: set[lt.torrent_handle]
    announced: set[lt.torrent_handle] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self) -> None:
        if not self.unpaused and not self.announced:
            self.done.set()


@dataclass(eq=False)
class _Torrent:
    """What the session knows about one torrent, keyed by its v1 info-hash."""

    info_hash: str
    name: str
    size: int
    handle: lt.torrent_handle
    save_dir: Path
    added: float
    seeding: bool
    last_activity: float
    done: asyncio.Future | None = None  # set for downloads: the DownloadResult
    attribution: SourceAttribution = field(default_factory=SourceAttribution)
    sampler: asyncio.Task | None = None
    finished: bool = False  # torrent_finished seen; complete once cache_flushed follows
    finalizing: bool = False
    waiters: int = 0
    uploaded: int = 0  # total_payload_upload last accounted
    hash_failures: int = 0
    narrow: bool = False  # a single-piece download still limited to one connection
    removal: asyncio.Future | None = None
    move: asyncio.Future | None = None
    move_target: Path | None = None

    @property
    def path(self) -> Path:
        return self.save_dir / self.name


def _endpoint(ip: Any) -> str:
    host, port = ip
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_class_filter() -> lt.ip_filter:
    """Every IPv4 and IPv6 address in the global peer class, so rate limits apply to all."""
    f = lt.ip_filter()
    global_class = 1 << lt.session.global_peer_class_id
    f.add_rule("0.0.0.0", "255.255.255.255", global_class)
    f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", global_class)
    return f


def _session_settings(config: P2PConfig, role: Role) -> dict[str, Any]:
    return {
        "listen_interfaces": config.listen_interfaces(),
        "listen_system_port_fallback": False,
        "max_retry_port_bind": 0,
        "allow_multiple_connections_per_ip": True,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": int(_ALERT_MASK),
        "alert_queue_size": config.alert_queue_size,
        "min_announce_interval": int(config.min_announce_interval),
        "upload_rate_limit": config.upload_rate_limit,
        "download_rate_limit": config.download_rate_limit,
        "max_queued_disk_bytes": config.max_queued_disk_bytes,
        "peer_fingerprint": _PEER_FINGERPRINTS[role],
        "stop_tracker_timeout": _STOP_TRACKER_TIMEOUT,
        "tick_interval": _TICK_INTERVAL_MS,
        "request_queue_time": max(1, round(config.request_queue_time)),
        # A peer dropped for the connection limit (a single-piece download's one connection,
        # see _SINGLE_PIECE_GRACE) may be dialled again after 1 s, not libtorrent's 60: with
        # 60, an agent whose one slot went to another leecher kept its origin out until the
        # HTTP fallback (30 s; measured with two agents pulling the same manifest at once).
        "min_reconnect_time": 1,
    }


def _create_session(config: P2PConfig, role: Role) -> tuple[lt.session, int, list[str]]:
    """Build the session (spawns threads, binds sockets): runs in a worker thread.

    Returns the session, its listen port (0 when nothing could be bound) and the messages of
    the alerts raised so far (listen failures explain a port of 0).
    """
    # Default plugins minus smart_ban: it blames a corrupt block on the first peer with the
    # sender's IP address, and where peers share an address (loopback, NAT) it banned the
    # origin, stalling the download until its timeout (measured). Without it libtorrent still
    # bans corrupt senders, per peer, after failed pieces.
    session = lt.session(_session_settings(config, role), 0)
    for plugin in ("ut_metadata", "ut_pex"):
        session.add_extension(plugin)
    session.set_peer_class_filter(_peer_class_filter())
    port = session.listen_port() if session.is_listening() else 0
    messages = [a.message() for a in session.pop_alerts() if isinstance(a, lt.listen_failed_alert)]
    return session, port, messages


def _destroy_session(holder: list[lt.session]) -> None:
    """Drop the last reference to the session: its destructor joins libtorrent's threads.

    Runs in a worker thread, so the holder hands the only reference over and nothing on the
    loop's side keeps the session alive.
    """
    holder.pop()


def _parse_metainfo(metainfo: bytes) -> lt.torrent_info:
    try:
        ti = lt.torrent_info(metainfo)
    except RuntimeError as e:
        raise ValueError(f"invalid metainfo: {e}") from None
    if ti.num_files() != 1:
        raise ValueError(f"metainfo has {ti.num_files()} files; a blob torrent has exactly one")
    return ti


def _parse_and_stat(metainfo: bytes, path: Path) -> tuple[lt.torrent_info, int]:
    return _parse_metainfo(metainfo), path.stat().st_size


def _resolve(fut: asyncio.Future | None, result: Any = None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(result)


def _fail(fut: asyncio.Future | None, exc: BaseException) -> None:
    if fut is not None and not fut.done():
        fut.set_exception(exc)
        # Mark it retrieved: the callers that were waiting may have left (timeout, cancel).
        fut.exception()


class P2PSession:
    """The process's BitTorrent session; create it with :meth:`start`."""

    def __init__(
        self,
        config: P2PConfig,
        metrics: Metrics,
        session: lt.session,
        alert_fds: tuple[int, int],
        listen_port: int,
    ) -> None:
        self.config = config
        self.listen_port = listen_port
        self._ses: lt.session | None = session
        self._rfd, self._wfd = alert_fds
        self._loop = asyncio.get_running_loop()
        self._tasks = TaskOwner("p2p")
        self._closed = False
        self._torrents: dict[str, _Torrent] = {}
        self._by_handle: dict[lt.torrent_handle, _Torrent] = {}
        # Removal alerts carry only the info-hash (the handle is dead by then): FIFO per hash.
        self._removed: dict[str, deque[asyncio.Future]] = {}
        self._deleted: dict[str, deque[asyncio.Future]] = {}
        self._origin_addresses: frozenset[str] = frozenset()
        #: Called with the info-hash and file of a seeded torrent whose file failed a piece
        #: hash (the torrent is being removed): the owner of the file checks and replaces it.
        self.on_seed_corrupt: Callable[[str, Path], None] | None = None
        self._stopping: _Stopping | None = None
        local = f"{config.peer_ip or config.listen.host}:{listen_port}"
        self._log = get_logger("p2p", local=local)

        self._m_download_bytes = metrics.counter(
            "kraken_p2p_download_bytes_total", "Payload bytes downloaded, by source", ["source"]
        )
        for source in SOURCES:
            self._m_download_bytes.labels(source)
        self._m_upload_bytes = metrics.counter("kraken_p2p_upload_bytes_total", "Payload bytes uploaded to peers")
        self._m_download_seconds = metrics.histogram(
            "kraken_p2p_download_seconds", "Time from adding a torrent to having it complete on disk"
        )
        self._m_downloads = metrics.counter("kraken_p2p_downloads_total", "Downloads by outcome", ["result"])
        self._m_active = metrics.gauge("kraken_p2p_active_torrents", "Torrents in the session (downloading or seeding)")
        self._m_hash_failures = metrics.counter("kraken_p2p_hash_failures_total", "Pieces that failed their hash check")

        self._handlers: dict[type, Callable[[Any], None]] = {
            lt.torrent_finished_alert: self._on_finished,
            lt.cache_flushed_alert: self._on_cache_flushed,
            lt.torrent_error_alert: self._on_torrent_error,
            lt.file_error_alert: self._on_file_error,
            lt.hash_failed_alert: self._on_hash_failed,
            lt.peer_connect_alert: self._on_peer_connect,
            lt.peer_disconnected_alert: self._on_peer_disconnected,
            lt.peer_ban_alert: self._on_peer_ban,
            lt.tracker_error_alert: self._on_tracker_error,
            lt.tracker_announce_alert: self._on_tracker_announce,
            lt.tracker_reply_alert: self._on_tracker_reply,
            lt.torrent_paused_alert: self._on_torrent_paused,
            lt.tracker_warning_alert: self._on_tracker_warning,
            lt.storage_moved_alert: self._on_storage_moved,
            lt.storage_moved_failed_alert: self._on_storage_moved_failed,
            lt.torrent_removed_alert: self._on_torrent_removed,
            lt.torrent_deleted_alert: self._on_torrent_deleted,
            lt.torrent_delete_failed_alert: self._on_torrent_delete_failed,
            lt.state_update_alert: self._on_state_update,
            lt.alerts_dropped_alert: self._on_alerts_dropped,
            lt.listen_failed_alert: self._on_listen_failed,
            lt.performance_alert: self._on_performance,
        }

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def start(cls, config: P2PConfig, metrics: Metrics | None = None, *, role: Role = "agent") -> P2PSession:
        """Create the session, listening on ``config.listen``; raises :class:`P2PError` if it cannot."""
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        try:
            session, port, failures = await asyncio.to_thread(_create_session, config, role)
        except BaseException:
            os.close(rfd)
            os.close(wfd)
            raise
        try:
            if not port:
                reason = "; ".join(failures) or "no listen socket"
                raise P2PError(f"P2P session cannot listen on {config.listen_interfaces()}: {reason}")
            self = cls(config, metrics or Metrics("p2p"), session, (rfd, wfd), port)
        except BaseException:  # e.g. these metrics are already registered on that registry
            holder = [session]
            del session  # the worker thread must drop the last reference
            await asyncio.to_thread(_destroy_session, holder)
            os.close(rfd)
            os.close(wfd)
            raise
        session.set_alert_fd(wfd)
        self._loop.add_reader(rfd, self._on_alert_fd)
        # The pipe only signals an empty queue becoming non-empty: take what is already queued.
        self._drain_alerts()
        self._tasks.spawn(self._stats_loop(), "stats")
        self._log.info("P2P session started", role=role, listen=config.listen_interfaces(), port=port)
        return self

    async def close(self) -> None:
        """Stop everything; the session is torn down in a worker thread (it joins libtorrent's threads)."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.close()
        if self._by_handle:
            await self._announce_stopped()
        self._loop.remove_reader(self._rfd)
        for rec in self._torrents.values():
            _fail(rec.done, DownloadError("P2P session closed"))
            _fail(rec.move, P2PError("P2P session closed"))
        for waiting in (*self._removed.values(), *self._deleted.values()):
            for fut in waiting:
                _resolve(fut)
        self._torrents.clear()
        self._by_handle.clear()
        self._m_active.set(0)
        holder = [self._ses]
        self._ses = None
        await asyncio.to_thread(_destroy_session, holder)
        # Only now: libtorrent may write to the pipe until its session is gone.
        os.close(self._rfd)
        os.close(self._wfd)
        self._log.info("P2P session closed")

    async def _announce_stopped(self) -> None:
        """Pause every torrent and wait (bounded) until the trackers answered the "stopped" announces.

        Done while the loop runs because the session's destructor, which would otherwise send
        them and wait for the answers, holds the GIL: measured, it stalled the event loop for
        the whole ``stop_tracker_timeout``, and a tracker running in this process could not
        answer at all. With nothing left in flight the destructor returns in about a millisecond.
        """
        stopping = _Stopping(unpaused=set(self._by_handle))
        self._stopping = stopping
        self._session().pause()
        try:
            await asyncio.wait_for(stopping.done.wait(), _STOP_TRACKER_TIMEOUT + 0.5)
        except TimeoutError:
            self._log.warning("trackers did not answer the stopped announces; closing anyway")

    @property
    def alert_fds(self) -> tuple[int, int]:
        """The alert pipe's (read, write) descriptors; closed by :meth:`close`."""
        return self._rfd, self._wfd

    def set_origin_addresses(self, addresses: set[str]) -> None:
        """P2P ``ip:port`` addresses of the origins, for attributing downloaded bytes."""
        self._origin_addresses = frozenset(addresses)

    def downloaded(self, info_hash: str) -> int | None:
        """Payload bytes a download in progress has received (as last sampled, so it moves in
        steps of ``stats_interval`` at most); ``None`` if it is not downloading here."""
        rec = self._torrents.get(info_hash)
        if rec is None or rec.seeding:
            return None
        return sum(rec.attribution.by_source.values())

    def torrents(self) -> dict[str, Path]:
        """Info-hash -> file path of every torrent in the session."""
        return {ih: rec.path for ih, rec in self._torrents.items()}

    # ---------------------------------------------------------------- operations

    async def download(
        self, metainfo: bytes, save_dir: Path, tracker_url: str, *, timeout: float,
        piece_priorities: list[int] | None = None,
    ) -> DownloadResult:
        """Download the torrent into ``save_dir`` and keep seeding it (see the module docstring).

        ``piece_priorities`` (libtorrent's 1..7, one per piece) orders which pieces are asked
        for first (:mod:`kraken.p2p.pieces`); a torrent already downloading keeps its order."""
        self._check_open()
        ti = await asyncio.to_thread(_parse_metainfo, metainfo)
        self._check_open()
        info_hash = str(ti.info_hashes().v1)
        rec = self._torrents.get(info_hash)
        if rec is None:
            rec = self._add(ti, save_dir, tracker_url, seed=False, piece_priorities=piece_priorities)
        elif rec.seeding:
            rec.last_activity = time.monotonic()
            return DownloadResult(info_hash, rec.path, rec.size, 0.0, 0, 0, dict.fromkeys(SOURCES, 0), 0)
        assert rec.done is not None
        rec.waiters += 1
        try:
            return await asyncio.wait_for(asyncio.shield(rec.done), timeout)
        except TimeoutError:
            if rec.finalizing and self._torrents.get(info_hash) is rec:
                # Complete on disk already, only the bookkeeping is left: do not waste it.
                return await asyncio.shield(rec.done)
            if rec.waiters == 1 and self._torrents.get(info_hash) is rec:
                self._m_downloads.labels("timeout").inc()
                await self._await_removal(self._start_removal(rec, delete_files=True, reason="timeout"))
            raise DownloadTimeout(f"torrent {rec.name} ({info_hash}) not complete after {timeout:g}s") from None
        except DownloadError:
            if rec.removal is not None:
                await self._await_removal(rec.removal)
            raise
        except asyncio.CancelledError:
            if rec.waiters == 1 and self._torrents.get(info_hash) is rec and not rec.seeding:
                self._start_removal(rec, delete_files=True, reason="abandoned")
            raise
        finally:
            rec.waiters -= 1

    async def seed(self, metainfo: bytes, path: Path, tracker_url: str) -> str:
        """Seed the complete file at ``path`` without hashing it first; returns the info-hash."""
        self._check_open()
        ti, size = await asyncio.to_thread(_parse_and_stat, metainfo, path)
        self._check_open()
        if size != ti.total_size():
            raise ValueError(f"{path}: {size} bytes, the metainfo describes {ti.total_size()}")
        info_hash = str(ti.info_hashes().v1)
        rec = self._torrents.get(info_hash)
        if rec is None:
            self._add(ti, path.parent, tracker_url, seed=True, file_name=path.name)
        else:
            rec.last_activity = time.monotonic()
        return info_hash

    async def move_storage(self, info_hash: str, new_dir: Path) -> Path:
        """Move the torrent's file into ``new_dir`` and keep seeding it from there."""
        rec = self._get(info_hash)
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
        if self._torrents.get(info_hash) is not rec:
            return
        self._account_upload(rec, status.total_payload_upload)
        await self._await_removal(self._start_removal(rec, delete_files=delete_files, reason="requested"))

    # ---------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._closed:
            raise P2PError("P2P session closed")

    def _get(self, info_hash: str) -> _Torrent:
        rec = self._torrents.get(info_hash)
        if rec is None:
            raise P2PError(f"no torrent {info_hash} in the session")
        return rec

    def _session(self) -> lt.session:
        assert self._ses is not None
        return self._ses

    def _add(
        self, ti: lt.torrent_info, save_dir: Path, tracker_url: str, *, seed: bool, file_name: str | None = None,
        piece_priorities: list[int] | None = None,
    ) -> _Torrent:
        atp = lt.add_torrent_params()
        atp.ti = ti
        if piece_priorities is not None:
            atp.piece_priorities = piece_priorities
        atp.save_path = str(save_dir)
        atp.trackers = [tracker_url]
        narrow = not seed and ti.num_pieces() == 1
        atp.max_connections = 1 if narrow else self.config.connections_per_torrent
        flags = atp.flags & ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        flags |= lt.torrent_flags.update_subscribe  # state_update alerts carry its upload counter
        if seed:
            flags |= lt.torrent_flags.seed_mode
        atp.flags = flags
        name = ti.name()
        if file_name is not None and file_name != name:
            atp.renamed_files = {0: file_name}
            name = file_name
        try:
            handle = self._session().add_torrent(atp)
        except RuntimeError as e:
            raise P2PError(f"cannot add torrent {name}: {e}") from None
        now = time.monotonic()
        rec = _Torrent(
            info_hash=str(ti.info_hashes().v1),
            name=name,
            size=ti.total_size(),
            handle=handle,
            save_dir=save_dir,
            added=now,
            seeding=seed,
            last_activity=now,
            narrow=narrow,
        )
        if not seed:
            rec.done = self._loop.create_future()
            rec.sampler = self._tasks.spawn(self._sample_loop(rec), f"sample:{rec.info_hash[:12]}")
        self._torrents[rec.info_hash] = rec
        self._by_handle[handle] = rec
        self._m_active.set(len(self._torrents))
        self._log.info(
            "Added new torrent",
            name=rec.name,
            info_hash=rec.info_hash,
            size=rec.size,
            mode="seed" if seed else "download",
            dir=save_dir,
        )
        return rec

    def _start_removal(self, rec: _Torrent, *, delete_files: bool, reason: str) -> asyncio.Future:
        """Take the torrent out of the session now; the future completes on libtorrent's alert."""
        del self._torrents[rec.info_hash]
        del self._by_handle[rec.handle]
        self._m_active.set(len(self._torrents))
        if rec.sampler is not None:
            rec.sampler.cancel()
        if not rec.seeding:
            _fail(rec.done, DownloadError(f"torrent {rec.name} ({rec.info_hash}) removed: {reason}"))
        _fail(rec.move, P2PError(f"torrent {rec.name} removed while moving: {reason}"))
        fut = self._loop.create_future()
        (self._deleted if delete_files else self._removed).setdefault(rec.info_hash, deque()).append(fut)
        rec.removal = fut
        self._session().remove_torrent(rec.handle, lt.session.delete_files if delete_files else 0)
        self._log.info(
            "torrent removed", name=rec.name, info_hash=rec.info_hash, reason=reason, delete_files=delete_files
        )
        return fut

    async def _await_removal(self, fut: asyncio.Future) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(fut), _REMOVAL_TIMEOUT)
        except TimeoutError:
            self._log.warning("no confirmation of a torrent removal from libtorrent", timeout=_REMOVAL_TIMEOUT)

    def _source(self, ip: Any, pid: lt.sha1_hash) -> str:
        if _endpoint(ip) in self._origin_addresses or pid.to_bytes().startswith(ORIGIN_PEER_ID_PREFIX):
            return ORIGIN
        return PEER

    def _sample_peers(self, handle: lt.torrent_handle) -> list[PeerSample]:
        """Open connections of a torrent; waits for libtorrent's network thread (worker thread only)."""
        return [
            PeerSample(_endpoint(p.ip), self._source(p.ip, p.pid), p.total_download, float(p.payload_down_speed))
            for p in handle.get_peer_info()
        ]

    def _snapshot(self, handle: lt.torrent_handle) -> tuple[list[PeerSample], lt.torrent_status]:
        return self._sample_peers(handle), handle.status()

    def _count_download(self, added: dict[str, int]) -> None:
        for source, n in added.items():
            if n:
                self._m_download_bytes.labels(source).inc(n)

    def _account_upload(self, rec: _Torrent, total_payload_upload: int) -> None:
        delta = total_payload_upload - rec.uploaded
        if delta > 0:
            self._m_upload_bytes.inc(delta)
            rec.uploaded = total_payload_upload
            rec.last_activity = time.monotonic()

    async def _sample_loop(self, rec: _Torrent) -> None:
        """Attribute a download's bytes to sources while it runs (cancelled at completion).

        The first samples come quickly and the interval doubles up to ``stats_interval``, so
        even a download of a fraction of a second is mostly sampled rather than estimated.
        """
        interval = _FIRST_SAMPLE_DELAY
        progress = rec.added
        while True:
            await asyncio.sleep(interval)
            interval = min(interval * 2, self.config.stats_interval)
            try:
                samples = await asyncio.to_thread(self._sample_peers, rec.handle)
            except RuntimeError:  # removed meanwhile
                return
            added = rec.attribution.observe(samples)
            self._count_download(added)
            now = time.monotonic()
            if any(added.values()):
                progress = now
            elif rec.narrow and now - progress >= _SINGLE_PIECE_GRACE:
                self._widen(rec)
                self._log.info("single-piece download opened to more peers", name=rec.name,
                               info_hash=rec.info_hash, stalled=round(now - progress, 3))

    def _widen(self, rec: _Torrent) -> None:
        """Give a single-piece torrent ``connections_per_torrent`` connections: once its download
        stalls, and once it is complete (it then seeds, to as many peers as any other)."""
        rec.narrow = False
        try:
            rec.handle.set_max_connections(self.config.connections_per_torrent)
        except RuntimeError:  # removed meanwhile
            pass

    async def _stats_loop(self) -> None:
        """Refresh upload counters (state_update alerts) and remove idle seeds."""
        while True:
            await asyncio.sleep(self.config.stats_interval)
            self._session().post_torrent_updates()
            self._remove_idle()

    def _remove_idle(self) -> None:
        idle_time = self.config.seed_idle_time
        if not idle_time:
            return
        now = time.monotonic()
        for rec in list(self._torrents.values()):
            if rec.seeding and rec.move is None and now - rec.last_activity > idle_time:
                self._start_removal(rec, delete_files=False, reason="idle")

    async def _complete(self, rec: _Torrent) -> None:
        """The download is on disk (cache flushed): settle attribution and wake the callers."""
        if rec.narrow:
            self._widen(rec)
        if rec.sampler is not None:
            rec.sampler.cancel()
            await asyncio.gather(rec.sampler, return_exceptions=True)
            rec.sampler = None
        try:
            samples, status = await asyncio.to_thread(self._snapshot, rec.handle)
        except RuntimeError:  # removed meanwhile; the removal failed the callers
            return
        if self._torrents.get(rec.info_hash) is not rec:
            return
        self._count_download(rec.attribution.observe(samples))
        self._count_download(rec.attribution.settle(status.total_payload_download))
        self._account_upload(rec, status.total_payload_upload)
        now = time.monotonic()
        rec.seeding = True
        rec.last_activity = now
        result = DownloadResult(
            info_hash=rec.info_hash,
            path=rec.path,
            size=rec.size,
            seconds=now - rec.added,
            downloaded=status.total_payload_download,
            uploaded=status.total_payload_upload,
            downloaded_by_source=dict(rec.attribution.by_source),
            hash_failures=rec.hash_failures,
        )
        self._m_download_seconds.observe(result.seconds)
        self._m_downloads.labels("complete").inc()
        self._log.info(
            "Torrent complete",
            name=rec.name,
            info_hash=rec.info_hash,
            size=rec.size,
            seconds=round(result.seconds, 3),
            downloaded=result.downloaded,
            from_origin=result.downloaded_by_source[ORIGIN],
            from_peers=result.downloaded_by_source[PEER],
            uploaded=result.uploaded,
            hash_failures=rec.hash_failures,
        )
        _resolve(rec.done, result)

    async def _recheck(self, rec: _Torrent) -> None:
        """After lost alerts: find out from the status whether a download finished or a move ended."""
        try:
            status = await asyncio.to_thread(rec.handle.status)
        except RuntimeError:
            return
        if self._torrents.get(rec.info_hash) is not rec:
            return
        if rec.move is not None and not status.moving_storage:
            if Path(status.save_path) == rec.move_target:
                rec.save_dir = rec.move_target
                _resolve(rec.move)
            else:
                _fail(rec.move, P2PError(f"moving torrent {rec.name} to {rec.move_target} did not happen"))
        if not rec.seeding and not rec.finalizing and status.is_finished:
            # Ask for the flush again; its cache_flushed alert completes the download.
            rec.finished = True
            rec.handle.flush_cache()

    # ---------------------------------------------------------------- alerts

    def _on_alert_fd(self) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        self._drain_alerts()

    def _drain_alerts(self) -> None:
        for alert in self._session().pop_alerts():
            handler = self._handlers.get(type(alert))
            if handler is None:
                continue
            try:
                handler(alert)
            except Exception:  # noqa: BLE001 - one bad alert must not stop the pump
                self._log.exception("failed to handle a libtorrent alert", alert=type(alert).__name__)

    def _rec(self, alert: Any) -> _Torrent | None:
        return self._by_handle.get(alert.handle)

    def _on_finished(self, alert: lt.torrent_finished_alert) -> None:
        rec = self._rec(alert)
        if rec is not None and not rec.seeding:
            rec.finished = True

    def _on_cache_flushed(self, alert: lt.cache_flushed_alert) -> None:
        rec = self._rec(alert)
        if rec is not None and rec.finished and not rec.seeding and not rec.finalizing:
            rec.finalizing = True
            self._tasks.spawn(self._complete(rec), f"complete:{rec.info_hash[:12]}")

    def _fail_torrent(self, rec: _Torrent, error: str) -> None:
        """A download fails and its partial file goes; a seed whose file broke stops seeding."""
        if rec.seeding:
            self._start_removal(rec, delete_files=False, reason=f"error: {error}")
            return
        self._m_downloads.labels("error").inc()
        _fail(rec.done, DownloadError(f"torrent {rec.name} ({rec.info_hash}) failed: {error}"))
        self._start_removal(rec, delete_files=True, reason=f"error: {error}")

    def _on_torrent_error(self, alert: lt.torrent_error_alert) -> None:
        rec = self._rec(alert)
        if rec is None:
            return
        error = alert.error.message()
        self._log.error("torrent error", name=rec.name, info_hash=rec.info_hash, error=error)
        self._fail_torrent(rec, error)

    def _on_file_error(self, alert: lt.file_error_alert) -> None:
        rec = self._rec(alert)
        if rec is None:
            return
        error = f"{alert.error.message()} ({alert.filename()})"
        self._log.error("file error", name=rec.name, info_hash=rec.info_hash, error=error)
        self._fail_torrent(rec, error)

    def _on_hash_failed(self, alert: lt.hash_failed_alert) -> None:
        self._m_hash_failures.inc()
        rec = self._rec(alert)
        if rec is None:
            return
        rec.hash_failures += 1
        if rec.seeding:
            # Seed mode checks each piece on its first request: the file on disk is corrupt.
            self._log.error("seeded file is corrupt", name=rec.name, info_hash=rec.info_hash, piece=alert.piece_index)
            self._fail_torrent(rec, f"piece {alert.piece_index} of the seeded file fails its hash")
            if self.on_seed_corrupt is not None:
                self.on_seed_corrupt(rec.info_hash, rec.path)
        else:
            self._log.warning("piece hash failed", name=rec.name, info_hash=rec.info_hash, piece=alert.piece_index)

    def _on_peer_connect(self, alert: lt.peer_connect_alert) -> None:
        rec = self._rec(alert)
        if rec is not None:
            # No source here: the peer id is only known after the handshake.
            self._log.info("peer connected", name=rec.name, peer=_endpoint(alert.ip))

    def _on_peer_disconnected(self, alert: lt.peer_disconnected_alert) -> None:
        rec = self._rec(alert)
        if rec is None:
            return
        peer = _endpoint(alert.ip)
        source = self._source(alert.ip, alert.pid)
        self._log.info("peer disconnected", name=rec.name, peer=peer, source=source, reason=alert.error.message())
        # Connections that never finished the handshake (no peer id) or that reached this
        # very session (PEX on a shared IP) carried no payload: keep them out of the estimate.
        carried_payload = not alert.pid.is_all_zeros() and not (
            alert.error.category().name() == "libtorrent" and alert.error.value() == _SELF_CONNECTION
        )
        if not rec.seeding and carried_payload:
            rec.attribution.closed(peer, source)

    def _on_peer_ban(self, alert: lt.peer_ban_alert) -> None:
        rec = self._rec(alert)
        self._log.warning("peer banned (sent corrupt data)", name=rec.name if rec else "", peer=_endpoint(alert.ip))

    def _on_tracker_announce(self, alert: lt.tracker_announce_alert) -> None:
        if self._stopping is not None and alert.event == lt.event_t.stopped:
            self._stopping.announced.add(alert.handle)

    def _on_tracker_reply(self, alert: lt.tracker_reply_alert) -> None:
        if self._stopping is not None:
            self._stopping.announced.discard(alert.handle)
            self._stopping.update()

    def _on_torrent_paused(self, alert: lt.torrent_paused_alert) -> None:
        if self._stopping is not None:
            self._stopping.unpaused.discard(alert.handle)
            self._stopping.update()

    def _on_tracker_error(self, alert: lt.tracker_error_alert) -> None:
        if self._stopping is not None:
            self._stopping.announced.discard(alert.handle)
            self._stopping.update()
        rec = self._rec(alert)
        self._log.warning(
            "tracker error",
            name=rec.name if rec else alert.torrent_name,
            url=alert.tracker_url(),
            error=alert.error.message(),
            reason=alert.failure_reason(),
            times_in_row=alert.times_in_row,
        )

    def _on_tracker_warning(self, alert: lt.tracker_warning_alert) -> None:
        self._log.warning("tracker warning", name=alert.torrent_name, url=alert.tracker_url(), message=alert.message())

    def _on_storage_moved(self, alert: lt.storage_moved_alert) -> None:
        rec = self._rec(alert)
        if rec is None:
            return
        rec.save_dir = Path(alert.storage_path())
        self._log.info("storage moved", name=rec.name, info_hash=rec.info_hash, old=alert.old_path(), new=rec.save_dir)
        _resolve(rec.move)

    def _on_storage_moved_failed(self, alert: lt.storage_moved_failed_alert) -> None:
        rec = self._rec(alert)
        if rec is None:
            return
        error = f"{alert.error.message()} ({alert.file_path()})"
        self._log.error("storage move failed", name=rec.name, info_hash=rec.info_hash, error=error)
        _fail(rec.move, P2PError(f"moving torrent {rec.name} failed: {error}"))

    def _pop_waiter(self, waiting: dict[str, deque[asyncio.Future]], info_hash: str) -> asyncio.Future | None:
        queue = waiting.get(info_hash)
        if not queue:
            return None
        fut = queue.popleft()
        if not queue:
            del waiting[info_hash]
        return fut

    def _on_torrent_removed(self, alert: lt.torrent_removed_alert) -> None:
        _resolve(self._pop_waiter(self._removed, str(alert.info_hashes.v1)))

    def _on_torrent_deleted(self, alert: lt.torrent_deleted_alert) -> None:
        _resolve(self._pop_waiter(self._deleted, str(alert.info_hashes.v1)))

    def _on_torrent_delete_failed(self, alert: lt.torrent_delete_failed_alert) -> None:
        info_hash = str(alert.info_hashes.v1)
        self._log.warning("could not delete a removed torrent's file", info_hash=info_hash, error=alert.error.message())
        _resolve(self._pop_waiter(self._deleted, info_hash))

    def _on_state_update(self, alert: lt.state_update_alert) -> None:
        for status in alert.status:
            rec = self._by_handle.get(status.handle)
            if rec is not None:
                self._account_upload(rec, status.total_payload_upload)

    def _on_alerts_dropped(self, alert: lt.alerts_dropped_alert) -> None:
        self._log.warning(
            "libtorrent alert queue overflowed; re-checking pending work", limit=self.config.alert_queue_size
        )
        for rec in list(self._torrents.values()):
            if (not rec.seeding and not rec.finalizing) or rec.move is not None:
                self._tasks.spawn(self._recheck(rec), f"recheck:{rec.info_hash[:12]}")

    def _on_listen_failed(self, alert: lt.listen_failed_alert) -> None:
        self._log.error("P2P listen failed", message=alert.message())

    def _on_performance(self, alert: lt.performance_alert) -> None:
        self._log.warning("libtorrent performance warning", message=alert.message())
