"""Reading a torrent's pieces while it downloads, in the order a reader wants them.

An agent streams a cold blob to its client as the pieces arrive (:mod:`kraken.agent.streaming`):
it asks for piece ``i`` and gets its bytes once libtorrent has verified it (SHA-1 against
the metainfo). libtorrent says which pieces are verified with ``piece_finished`` (category
``piece_progress``) and hands a piece's bytes over with ``read_piece`` -> ``read_piece_alert``;
reading the file instead could see bytes still queued in libtorrent's disk thread.

:meth:`PieceReads.hurry` gives the next pieces a reader needs the top priority (7): libtorrent
asks for those before any other. The first time, the torrent's own top band (the swarm slot
of :mod:`kraken.p2p.shares`) steps down to 6, still far ahead of the rest (libtorrent ranks
a piece by availability x (8 - priority)): agents pulling at once still fetch different
pieces once the reader's window is served. Hurrying stops, and the torrent's own priorities
come back, as soon as the agent sees another agent downloading the same torrent (its
steering, :mod:`kraken.p2p.shares`, calls :meth:`PieceReads.swarmed`) or another agent has
sent it bytes (the per-source attribution of :mod:`kraken.p2p.stats`, sampled each
``stats_interval``): agents pulling together would all ask the origin for the same window,
and hold the same pieces, with nothing to trade
(``bench/fanout.py``, 4 agents, 256 MiB at 20 MiB/s: 2.44 x T_min and 2.47 origin copies
with the window kept, against 1.45 and 1.44 without). Not ``set_piece_deadline``: libtorrent serves
deadlines from its once-a-second tick (first byte up to a second later), and not
``sequential_download``: that would order the whole torrent and drop the swarm slot.
"""
from __future__ import annotations

import asyncio
import contextlib

import libtorrent as lt

from kraken.p2p.alerts import AlertHandler
from kraken.p2p.attribution import PEER
from kraken.p2p.outcomes import P2PError
from kraken.p2p.torrents import Torrent, TorrentTable, fail, resolve

#: A reader's window.
HURRIED = 7
#: The swarm slot's band while a reader's window goes first.
BAND_WHILE_HURRIED = 6
#: libtorrent's priority of a piece added without one.
DEFAULT_PRIORITY = 4


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
        """Ask for ``pieces`` (those not verified yet) before any other."""
        if rec.seeding or rec.swarmed:
            return
        if rec.attribution.by_source[PEER]:
            self.swarmed(rec)
            return
        changes = [(index, HURRIED) for index in pieces if index not in rec.have]
        if not rec.hurried:
            rec.hurried = True
            band = [i for i, p in enumerate(rec.priorities or ()) if p == HURRIED and i not in rec.have]
            changes = [(i, BAND_WHILE_HURRIED) for i in band if i not in pieces] + changes
        if changes:
            with contextlib.suppress(RuntimeError):  # removed meanwhile
                rec.handle.prioritize_pieces(changes)

    @staticmethod
    def swarmed(rec: Torrent) -> None:
        """Other agents share this download: its own priorities again, no more hurrying."""
        rec.swarmed = True
        if not rec.hurried:
            return
        priorities = rec.priorities or [DEFAULT_PRIORITY] * rec.pieces
        with contextlib.suppress(RuntimeError):  # removed meanwhile
            rec.handle.prioritize_pieces([(i, p) for i, p in enumerate(priorities) if i not in rec.have])

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
