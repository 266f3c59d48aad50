"""Closing the session politely: every torrent paused and its "stopped" announce answered
before the session is destroyed.

Done while the loop runs because the session's destructor, which would otherwise send those
announces and wait for the answers, holds the GIL: measured, it stalled the event loop for
the whole ``stop_tracker_timeout``, and a tracker running in this process could not answer at
all. With nothing left in flight the destructor returns in about a millisecond. The wait is
bounded (about 2.5 s): the tracker expires silent peers anyway.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import libtorrent as lt

from kraken.log import KrakenLogger
from kraken.p2p.alerts import AlertHandler
from kraken.p2p.settings import STOP_TRACKER_TIMEOUT, NativeSession


@dataclass(eq=False)
class _Stopping:
    """Torrents not yet paused, and stopped announces not yet answered."""

    unpaused: set[lt.torrent_handle]
    announced: set[lt.torrent_handle] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self) -> None:
        if not self.unpaused and not self.announced:
            self.done.set()


class StopAnnouncer:
    """Pauses every torrent at close and follows the stopped announces through their alerts."""

    def __init__(self, native: NativeSession, log: KrakenLogger) -> None:
        self._native = native
        self._log = log
        self._stopping: _Stopping | None = None

    def alert_handlers(self) -> dict[type, AlertHandler]:
        return {
            lt.tracker_announce_alert: self._on_tracker_announce,
            lt.tracker_reply_alert: self._on_tracker_answered,
            lt.tracker_error_alert: self._on_tracker_answered,
            lt.torrent_paused_alert: self._on_torrent_paused,
        }

    async def announce_stopped(self, handles: set[lt.torrent_handle]) -> None:
        """Pause every torrent and wait (bounded) until the trackers answered the "stopped" announces."""
        stopping = _Stopping(unpaused=handles)
        self._stopping = stopping
        self._native.get().pause()
        try:
            await asyncio.wait_for(stopping.done.wait(), STOP_TRACKER_TIMEOUT + 0.5)
        except TimeoutError:
            self._log.warning("trackers did not answer the stopped announces; closing anyway")

    def _on_tracker_announce(self, alert: lt.tracker_announce_alert) -> None:
        if self._stopping is not None and alert.event == lt.event_t.stopped:
            self._stopping.announced.add(alert.handle)

    def _on_tracker_answered(self, alert: lt.tracker_reply_alert | lt.tracker_error_alert) -> None:
        if self._stopping is not None:
            self._stopping.announced.discard(alert.handle)
            self._stopping.update()

    def _on_torrent_paused(self, alert: lt.torrent_paused_alert) -> None:
        if self._stopping is not None:
            self._stopping.unpaused.discard(alert.handle)
            self._stopping.update()
