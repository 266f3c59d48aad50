"""How torrents end their work: downloads completing on disk, moves finishing, failures, and
the re-checks that replace alerts lost to a queue overflow.

A download is complete **on disk** after ``torrent_finished`` *and then* ``cache_flushed``:
at ``torrent_finished`` writes may still be queued, and hashing the file then gave a wrong
sha256 in 10-20% of runs (measured). Completion settles the download's attribution and wakes
its callers with a :class:`~kraken.p2p.outcomes.DownloadResult`; the torrent keeps seeding.
Pieces failing their hash during a download are counted and fetched again. A seed is added
in seed mode (libtorrent hashes each piece on its first request), so a piece failing there
means the file is corrupt: the seed is removed, ``seeded file is corrupt`` is logged and
:attr:`Completion.on_seed_corrupt` tells the file's owner. A torrent or file error fails a
download (its partial file is deleted) and removes a seed (its file is left alone).

If the alert queue overflows, pending downloads and moves are re-checked from the torrent
status, so none hangs on a lost alert.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import libtorrent as lt

from kraken.log import KrakenLogger
from kraken.p2p.alerts import AlertHandler
from kraken.p2p.attribution import ORIGIN, PEER
from kraken.p2p.config import P2PConfig
from kraken.p2p.outcomes import DownloadError, DownloadResult, P2PError
from kraken.p2p.stats import Stats
from kraken.p2p.torrents import Torrent, TorrentTable, fail, resolve
from kraken.tasks import TaskOwner


class Completion:
    """Handles the alerts that finish, fail or move torrents."""

    def __init__(
        self, config: P2PConfig, torrents: TorrentTable, stats: Stats, tasks: TaskOwner, log: KrakenLogger
    ) -> None:
        self._config = config
        self._torrents = torrents
        self._stats = stats
        self._tasks = tasks
        self._log = log
        #: Called with the info-hash and file of a seeded torrent whose file failed a piece
        #: hash (the torrent is being removed): the owner of the file checks and replaces it.
        self.on_seed_corrupt: Callable[[str, Path], None] | None = None

    def alert_handlers(self) -> dict[type, AlertHandler]:
        return {
            lt.torrent_finished_alert: self._on_finished,
            lt.cache_flushed_alert: self._on_cache_flushed,
            lt.torrent_error_alert: self._on_torrent_error,
            lt.file_error_alert: self._on_file_error,
            lt.hash_failed_alert: self._on_hash_failed,
            lt.storage_moved_alert: self._on_storage_moved,
            lt.storage_moved_failed_alert: self._on_storage_moved_failed,
            lt.alerts_dropped_alert: self._on_alerts_dropped,
        }

    async def _complete(self, rec: Torrent) -> None:
        """The download is on disk (cache flushed): settle attribution and wake the callers."""
        if rec.narrow:
            rec.widen(self._config.connections_per_torrent)
        if rec.sampler is not None:
            rec.sampler.cancel()
            await asyncio.gather(rec.sampler, return_exceptions=True)
            rec.sampler = None
        try:
            samples, status = await asyncio.to_thread(self._stats.snapshot, rec.handle)
        except RuntimeError:  # removed meanwhile; the removal failed the callers
            return
        if not self._torrents.holds(rec):
            return
        self._stats.count_download(rec.attribution.observe(samples))
        self._stats.count_download(rec.attribution.settle(status.total_payload_download))
        self._stats.account_upload(rec, status.total_payload_upload)
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
        self._stats.metrics.download_seconds.observe(result.seconds)
        self._stats.metrics.downloads.labels("complete").inc()
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
        resolve(rec.done, result)

    async def _recheck(self, rec: Torrent) -> None:
        """After lost alerts: find out from the status whether a download finished or a move ended."""
        try:
            status = await asyncio.to_thread(rec.handle.status)
        except RuntimeError:
            return
        if not self._torrents.holds(rec):
            return
        if rec.move is not None and not status.moving_storage:
            if Path(status.save_path) == rec.move_target:
                rec.save_dir = rec.move_target
                resolve(rec.move)
            else:
                fail(rec.move, P2PError(f"moving torrent {rec.name} to {rec.move_target} did not happen"))
        if not rec.seeding and not rec.finalizing and status.is_finished:
            # Ask for the flush again; its cache_flushed alert completes the download.
            rec.finished = True
            rec.handle.flush_cache()

    def _fail_torrent(self, rec: Torrent, error: str) -> None:
        """A download fails and its partial file goes; a seed whose file broke stops seeding."""
        if rec.seeding:
            self._torrents.start_removal(rec, delete_files=False, reason=f"error: {error}")
            return
        self._stats.metrics.downloads.labels("error").inc()
        fail(rec.done, DownloadError(f"torrent {rec.name} ({rec.info_hash}) failed: {error}"))
        self._torrents.start_removal(rec, delete_files=True, reason=f"error: {error}")

    def _on_finished(self, alert: lt.torrent_finished_alert) -> None:
        rec = self._torrents.of(alert)
        if rec is not None and not rec.seeding:
            rec.finished = True

    def _on_cache_flushed(self, alert: lt.cache_flushed_alert) -> None:
        rec = self._torrents.of(alert)
        if rec is not None and rec.finished and not rec.seeding and not rec.finalizing:
            rec.finalizing = True
            self._tasks.spawn(self._complete(rec), f"complete:{rec.info_hash[:12]}")

    def _on_torrent_error(self, alert: lt.torrent_error_alert) -> None:
        rec = self._torrents.of(alert)
        if rec is None:
            return
        error = alert.error.message()
        self._log.error("torrent error", name=rec.name, info_hash=rec.info_hash, error=error)
        self._fail_torrent(rec, error)

    def _on_file_error(self, alert: lt.file_error_alert) -> None:
        rec = self._torrents.of(alert)
        if rec is None:
            return
        error = f"{alert.error.message()} ({alert.filename()})"
        self._log.error("file error", name=rec.name, info_hash=rec.info_hash, error=error)
        self._fail_torrent(rec, error)

    def _on_hash_failed(self, alert: lt.hash_failed_alert) -> None:
        self._stats.metrics.hash_failures.inc()
        rec = self._torrents.of(alert)
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

    def _on_storage_moved(self, alert: lt.storage_moved_alert) -> None:
        rec = self._torrents.of(alert)
        if rec is None:
            return
        rec.save_dir = Path(alert.storage_path())
        self._log.info("storage moved", name=rec.name, info_hash=rec.info_hash, old=alert.old_path(), new=rec.save_dir)
        resolve(rec.move)

    def _on_storage_moved_failed(self, alert: lt.storage_moved_failed_alert) -> None:
        rec = self._torrents.of(alert)
        if rec is None:
            return
        error = f"{alert.error.message()} ({alert.file_path()})"
        self._log.error("storage move failed", name=rec.name, info_hash=rec.info_hash, error=error)
        fail(rec.move, P2PError(f"moving torrent {rec.name} failed: {error}"))

    def _on_alerts_dropped(self, alert: lt.alerts_dropped_alert) -> None:
        self._log.warning(
            "libtorrent alert queue overflowed; re-checking pending work", limit=self._config.alert_queue_size
        )
        for rec in self._torrents.records():
            if (not rec.seeding and not rec.finalizing) or rec.move is not None:
                self._tasks.spawn(self._recheck(rec), f"recheck:{rec.info_hash[:12]}")
