"""Reading a torrent's pieces while it downloads, in the order a reader wants them.

An agent streams a cold blob to its client as the pieces arrive (:mod:`kraken.agent.streaming`):
it asks for piece ``i`` and gets its bytes once libtorrent has verified it (SHA-1 against
the metainfo). libtorrent says which pieces are verified with ``piece_finished`` (category
``piece_progress``) and hands a piece's bytes over with ``read_piece`` -> ``read_piece_alert``;
reading the file instead could see bytes still queued in libtorrent's disk thread.

:meth:`PieceReads.hurry` gives the next pieces a reader needs deadlines
(``set_piece_deadline``): libtorrent then requests them before any other, from the fastest
peers. Only the reader's window is hurried; the rest keeps its piece priorities (the swarm
slots of :mod:`kraken.p2p.pieces`), so agents pulling at once still fetch different pieces.
"""
from __future__ import annotations

import asyncio
import contextlib

import libtorrent as lt

from kraken.p2p.alerts import AlertHandler
from kraken.p2p.outcomes import P2PError
from kraken.p2p.torrents import Torrent, TorrentTable, fail, resolve

#: Milliseconds between the deadlines of consecutive hurried pieces (the first gets 0).
DEADLINE_STEP_MS = 50


class PieceReads:
    """Pending piece reads of the session's torrents; resolved from libtorrent's alerts."""

    def __init__(self, torrents: TorrentTable) -> None:
        self._torrents = torrents
        self._loop = asyncio.get_running_loop()

    def alert_handlers(self) -> dict[type, AlertHandler]:
        return {
            lt.piece_finished_alert: self._on_piece_finished,
            lt.read_piece_alert: self._on_read_piece,
        }

    async def read(self, rec: Torrent, index: int) -> bytes:
        """Piece ``index``'s bytes, once it is verified; P2PError if the torrent goes away."""
        if not 0 <= index < rec.pieces:
            raise P2PError(f"torrent {rec.name} has no piece {index}")
        fut: asyncio.Future[bytes] = self._loop.create_future()
        waiting = rec.reads.setdefault(index, [])
        waiting.append(fut)
        if len(waiting) == 1:
            if rec.seeding or index in rec.have:
                rec.handle.read_piece(index)
            else:
                rec.wanted.add(index)
        try:
            return await fut
        finally:
            if not fut.done() and fut in rec.reads.get(index, ()):
                rec.reads[index].remove(fut)
                if not rec.reads[index]:
                    del rec.reads[index]
                    rec.wanted.discard(index)

    def hurry(self, rec: Torrent, pieces: range) -> None:
        """Ask for ``pieces`` before any other (deadlines 0, 50, 100... ms), those not verified yet."""
        if rec.seeding:
            return
        with contextlib.suppress(RuntimeError):  # removed meanwhile
            for n, index in enumerate(i for i in pieces if i not in rec.have):
                rec.handle.set_piece_deadline(index, n * DEADLINE_STEP_MS)

    def _on_piece_finished(self, alert: lt.piece_finished_alert) -> None:
        rec = self._torrents.of(alert)
        if rec is None or rec.seeding:
            return
        index = alert.piece_index
        rec.have.add(index)
        if index in rec.wanted:
            rec.wanted.discard(index)
            rec.handle.read_piece(index)

    def _on_read_piece(self, alert: lt.read_piece_alert) -> None:
        rec = self._torrents.of(alert)
        if rec is None:
            return
        waiting = rec.reads.pop(alert.piece, [])
        if alert.error.value():
            error = P2PError(f"reading piece {alert.piece} of {rec.name} failed: {alert.error.message()}")
            for fut in waiting:
                fail(fut, error)
            return
        data = bytes(alert.buffer)
        for fut in waiting:
            resolve(fut, data)
