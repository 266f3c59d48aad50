"""The session's torrents: one record per torrent, the table that finds them by info-hash or by
libtorrent handle, and adding and removing them.

A torrent is added started (not auto-managed, not paused, which saves 0.5-0.9 s; with
``p2p.tls`` paused, given its certificate, then resumed, see :mod:`kraken.p2p.tls`) and
subscribed to ``state_update`` alerts (they carry its upload counter). Removal takes the
record out of the table at once and completes on libtorrent's ``torrent_removed`` or
``torrent_deleted`` alert; those carry only the info-hash (the handle is dead by then), so the
futures waiting for them queue per info-hash.

A single-piece download starts with one connection: libtorrent is in end-game mode from its
first request (every piece is then being downloaded), so a second seeder connected at once
was asked for the same blocks and a 289-byte manifest arrived twice (measured: 578 bytes
downloaded with an origin and an agent seeding). :meth:`Torrent.widen` opens it to
``connections_per_torrent`` peers once it has received nothing for a while (a silent or
useless first peer; :mod:`kraken.p2p.stats`) and in any case once complete (it then seeds).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libtorrent as lt
from prometheus_client import Gauge

from kraken.log import KrakenLogger
from kraken.p2p.alerts import AlertHandler
from kraken.p2p.attribution import SourceAttribution
from kraken.p2p.config import P2PConfig
from kraken.p2p.outcomes import DownloadError, P2PError
from kraken.p2p.settings import NativeSession
from kraken.p2p.tls import PeerTLS

# libtorrent answers a removal with an alert within milliseconds; this bound only matters
# if that alert was lost to a queue overflow.
_REMOVAL_TIMEOUT = 10.0


def resolve(fut: asyncio.Future | None, result: Any = None) -> None:
    """Set the future's result unless it has one (or there is no future)."""
    if fut is not None and not fut.done():
        fut.set_result(result)


def fail(fut: asyncio.Future | None, exc: BaseException) -> None:
    """Set the future's exception unless it has a result (or there is no future)."""
    if fut is not None and not fut.done():
        fut.set_exception(exc)
        # Mark it retrieved: the callers that were waiting may have left (timeout, cancel).
        fut.exception()


def fail_reads(rec: Torrent, reason: str) -> None:
    """Fail every piece read pending on the torrent (it is going away)."""
    for waiting in rec.reads.values():
        for fut in waiting:
            fail(fut, P2PError(reason))
    rec.reads.clear()
    rec.wanted.clear()


def parse_metainfo(metainfo: bytes) -> lt.torrent_info:
    """The blob torrent in ``metainfo`` (worker thread): ValueError unless it has one file."""
    try:
        ti = lt.torrent_info(metainfo)
    except RuntimeError as e:
        raise ValueError(f"invalid metainfo: {e}") from None
    if ti.num_files() != 1:
        raise ValueError(f"metainfo has {ti.num_files()} files; a blob torrent has exactly one")
    return ti


def parse_and_stat(metainfo: bytes, path: Path) -> tuple[lt.torrent_info, int]:
    """:func:`parse_metainfo` and the size of the file at ``path`` (worker thread)."""
    return parse_metainfo(metainfo), path.stat().st_size


@dataclass(eq=False)
class Torrent:
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
    pieces: int = 0
    priorities: list[int] | None = None  # the piece priorities it was added with
    hurried: bool = False  # a reader's window was given the top priority (kraken.p2p.piecereads)
    swarmed: bool = False  # other agents sent it bytes: no more hurrying
    have: set[int] = field(default_factory=set)  # pieces verified during this download
    # piece -> the futures of read_piece callers: resolved by read_piece_alert with its bytes
    reads: dict[int, list[asyncio.Future]] = field(default_factory=dict)
    wanted: set[int] = field(default_factory=set)  # pieces to read as soon as they are verified

    @property
    def path(self) -> Path:
        return self.save_dir / self.name

    def widen(self, connections: int) -> None:
        """Let a single-piece torrent use ``connections`` connections like any other."""
        self.narrow = False
        with contextlib.suppress(RuntimeError):  # removed meanwhile
            self.handle.set_max_connections(connections)


class TorrentTable:
    """The torrents in the session, by info-hash and by handle; adds and removes them."""

    def __init__(
        self, config: P2PConfig, native: NativeSession, active: Gauge, log: KrakenLogger, tls: PeerTLS | None = None
    ) -> None:
        self._config = config
        self._tls = tls
        self._native = native
        self._active = active
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._by_hash: dict[str, Torrent] = {}
        self._by_handle: dict[lt.torrent_handle, Torrent] = {}
        self._removed: dict[str, deque[asyncio.Future]] = {}
        self._deleted: dict[str, deque[asyncio.Future]] = {}

    def get(self, info_hash: str) -> Torrent | None:
        return self._by_hash.get(info_hash)

    def require(self, info_hash: str) -> Torrent:
        """The torrent; P2PError if it is not in the session."""
        rec = self._by_hash.get(info_hash)
        if rec is None:
            raise P2PError(f"no torrent {info_hash} in the session")
        return rec

    def of(self, alert: Any) -> Torrent | None:
        """The torrent a torrent alert is about, if it is still in the session."""
        return self._by_handle.get(alert.handle)

    def for_handle(self, handle: lt.torrent_handle) -> Torrent | None:
        return self._by_handle.get(handle)

    def holds(self, rec: Torrent) -> bool:
        """Whether ``rec`` is still the session's record of its torrent (not removed, not replaced)."""
        return self._by_hash.get(rec.info_hash) is rec

    def records(self) -> list[Torrent]:
        return list(self._by_hash.values())

    def handles(self) -> set[lt.torrent_handle]:
        return set(self._by_handle)

    def add(
        self, ti: lt.torrent_info, save_dir: Path, tracker_url: str, *, seed: bool, file_name: str | None = None,
        piece_priorities: list[int] | None = None,
    ) -> Torrent:
        """Add the torrent, downloading into (or, with ``seed``, seeding from) ``save_dir``."""
        atp = lt.add_torrent_params()
        atp.ti = ti
        if piece_priorities is not None:
            atp.piece_priorities = piece_priorities
        atp.save_path = str(save_dir)
        atp.trackers = [tracker_url]
        narrow = not seed and ti.num_pieces() == 1
        atp.max_connections = 1 if narrow else self._config.connections_per_torrent
        flags = atp.flags & ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        flags |= lt.torrent_flags.update_subscribe  # state_update alerts carry its upload counter
        if seed:
            flags |= lt.torrent_flags.seed_mode
        if self._tls is not None:
            # Paused until its certificate is set: the first announce and connections would
            # otherwise go out without one and fail (then wait for libtorrent's backoff).
            flags |= lt.torrent_flags.paused
        atp.flags = flags
        name = ti.name()
        if file_name is not None and file_name != name:
            atp.renamed_files = {0: file_name}
            name = file_name
        try:
            handle = self._native.get().add_torrent(atp)
        except RuntimeError as e:
            raise P2PError(f"cannot add torrent {name}: {e}") from None
        if self._tls is not None:
            self._tls.apply(handle)
            handle.resume()
        now = time.monotonic()
        rec = Torrent(
            info_hash=str(ti.info_hashes().v1),
            name=name,
            size=ti.total_size(),
            handle=handle,
            save_dir=save_dir,
            added=now,
            seeding=seed,
            last_activity=now,
            narrow=narrow,
            pieces=ti.num_pieces(),
            priorities=piece_priorities,
        )
        if not seed:
            rec.done = self._loop.create_future()
        self._by_hash[rec.info_hash] = rec
        self._by_handle[handle] = rec
        self._active.set(len(self._by_hash))
        self._log.info(
            "Added new torrent",
            name=rec.name,
            info_hash=rec.info_hash,
            size=rec.size,
            mode="seed" if seed else "download",
            dir=save_dir,
        )
        return rec

    def start_removal(self, rec: Torrent, *, delete_files: bool, reason: str) -> asyncio.Future:
        """Take the torrent out of the session now; the future completes on libtorrent's alert."""
        del self._by_hash[rec.info_hash]
        del self._by_handle[rec.handle]
        self._active.set(len(self._by_hash))
        if rec.sampler is not None:
            rec.sampler.cancel()
        if not rec.seeding:
            fail(rec.done, DownloadError(f"torrent {rec.name} ({rec.info_hash}) removed: {reason}"))
        fail(rec.move, P2PError(f"torrent {rec.name} removed while moving: {reason}"))
        fail_reads(rec, f"torrent {rec.name} removed: {reason}")
        fut = self._loop.create_future()
        (self._deleted if delete_files else self._removed).setdefault(rec.info_hash, deque()).append(fut)
        rec.removal = fut
        self._native.get().remove_torrent(rec.handle, lt.session.delete_files if delete_files else 0)
        self._log.info(
            "torrent removed", name=rec.name, info_hash=rec.info_hash, reason=reason, delete_files=delete_files
        )
        return fut

    async def await_removal(self, fut: asyncio.Future) -> None:
        """Wait (bounded) for libtorrent to confirm a removal."""
        try:
            await asyncio.wait_for(asyncio.shield(fut), _REMOVAL_TIMEOUT)
        except TimeoutError:
            self._log.warning("no confirmation of a torrent removal from libtorrent", timeout=_REMOVAL_TIMEOUT)

    def remove_idle(self) -> None:
        """Remove the seeds that uploaded nothing for ``seed_idle_time`` (their files stay)."""
        idle_time = self._config.seed_idle_time
        if not idle_time:
            return
        now = time.monotonic()
        for rec in self.records():
            if rec.seeding and rec.move is None and now - rec.last_activity > idle_time:
                self.start_removal(rec, delete_files=False, reason="idle")

    def close(self) -> None:
        """The session is closing: fail every pending download and move, release every waiter."""
        for rec in self._by_hash.values():
            fail(rec.done, DownloadError("P2P session closed"))
            fail(rec.move, P2PError("P2P session closed"))
            fail_reads(rec, "P2P session closed")
        for waiting in (*self._removed.values(), *self._deleted.values()):
            for fut in waiting:
                resolve(fut)
        self._by_hash.clear()
        self._by_handle.clear()
        self._active.set(0)

    # ---------------------------------------------------------------- alerts

    def alert_handlers(self) -> dict[type, AlertHandler]:
        return {
            lt.torrent_removed_alert: self._on_torrent_removed,
            lt.torrent_deleted_alert: self._on_torrent_deleted,
            lt.torrent_delete_failed_alert: self._on_torrent_delete_failed,
        }

    def _pop_waiter(self, waiting: dict[str, deque[asyncio.Future]], info_hash: str) -> asyncio.Future | None:
        queue = waiting.get(info_hash)
        if not queue:
            return None
        fut = queue.popleft()
        if not queue:
            del waiting[info_hash]
        return fut

    def _on_torrent_removed(self, alert: lt.torrent_removed_alert) -> None:
        resolve(self._pop_waiter(self._removed, str(alert.info_hashes.v1)))

    def _on_torrent_deleted(self, alert: lt.torrent_deleted_alert) -> None:
        resolve(self._pop_waiter(self._deleted, str(alert.info_hashes.v1)))

    def _on_torrent_delete_failed(self, alert: lt.torrent_delete_failed_alert) -> None:
        info_hash = str(alert.info_hashes.v1)
        self._log.warning("could not delete a removed torrent's file", info_hash=info_hash, error=alert.error.message())
        resolve(self._pop_waiter(self._deleted, info_hash))
