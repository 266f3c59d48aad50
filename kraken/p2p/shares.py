"""Shares: each agent of a swarm takes from the origin only its own share of the blob.

The origin's upload is the swarm's bottleneck: every piece it sends twice is time every agent
waits. Static priorities (a different eighth of the pieces first at each agent) partition the
blob only for 8 agents (4 agents left half of it to rarest-first, where they collide), and an
agent done with its eighth asked the origin for whatever was rarest: pieces another agent was
fetching from the origin at that moment.

So, while an agent downloads, :class:`ShareSteering` looks at the swarm every
:data:`POLL_INTERVAL` and re-prioritises:

- its share: the swarm cut into ``b`` equal bands of consecutive pieces, ``b`` the number of
  downloaders it knows of (the connected peers that are not seeds or origins, ever seen
  during this download, itself included, never less than ``slot + 1``) rounded up to a power
  of two; its band is the ``slot``-th point of the van der Corput sequence (0, 1/2, 1/4,
  3/4, ...), so slots ``0 .. b-1`` cover every band once. An agent connected to only some
  of the swarm (``connections_per_torrent``) still lands on the same ``b`` as long as it
  sees more than half of it. Priority 7, first from anyone, which is the origin as long as
  nobody else has them;
- pieces some non-origin peer already holds: priority :data:`SWARM_PRIORITY`;
- pieces only an origin holds and that belong to another agent's share: priority 1.

libtorrent's picker ranks a piece below 7 by how many non-seed peers hold it (halved at
priorities 4-6), the priority only breaking ties; priority 7 ignores availability. So the
share always comes first, and the rest stays rarest-first among the peers that have it.
(:data:`SWARM_PRIORITY` 2 instead of 6 measured no better.)

A streaming reader's window (:mod:`kraken.p2p.piecereads`) owns the priorities only while the
agent knows of no other downloader: the step still looks at the swarm then, but changes
nothing, and the first time it sees another downloader it ends the hurrying (``on_shared``)
and applies the share. Agents pulling one blob together thus never all ask the origin for
the same first pieces for longer than it takes them to connect.

Nothing gets priority 0: libtorrent calls a torrent whose wanted pieces are all present
finished, and the agent would then verify a partial file. The priorities only order the work;
a share whose agent left is fetched by the others once their own share is done.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import libtorrent as lt

from kraken.p2p.settings import ORIGIN_PEER_ID_PREFIX

POLL_INTERVAL = 0.25
SHARE_PRIORITY = 7
SWARM_PRIORITY = 6
OTHERS_PRIORITY = 1


@dataclass
class SwarmView:
    """What one agent sees of a torrent's swarm at one moment."""

    have: list[bool]
    in_swarm: list[bool]  # some connected peer other than an origin holds the piece
    downloaders: int  # peers known, not seeds, this agent included


def van_der_corput(k: int) -> float:
    """The k-th point of the base-2 van der Corput sequence: k's bits mirrored after the
    binary point (0, 0.5, 0.25, 0.75, 0.125, ...); the first 2^m points are the multiples of 2^-m."""
    value, denominator = 0.0, 1.0
    while k:
        denominator *= 2
        k, bit = divmod(k, 2)
        value += bit / denominator
    return value


def share_priorities(slot: int, swarm: int, view: SwarmView) -> list[int]:
    """The piece priorities for the agent in ``slot`` of a swarm of ``swarm`` downloaders."""
    bands = 1 << (max(swarm, 1) - 1).bit_length()
    mine = int(van_der_corput(slot % bands) * bands)
    num_pieces = len(view.have)
    priorities = []
    for piece, (have, in_swarm) in enumerate(zip(view.have, view.in_swarm, strict=True)):
        if have or piece * bands // num_pieces == mine:
            priorities.append(SHARE_PRIORITY)
        elif in_swarm:
            priorities.append(SWARM_PRIORITY)
        else:
            priorities.append(OTHERS_PRIORITY)
    return priorities


def observe(handle: lt.torrent_handle, num_pieces: int) -> tuple[SwarmView, set[bytes]]:
    """The swarm as this torrent sees it, and the peer ids of the downloaders connected to it
    (libtorrent round trips: worker thread only)."""
    status = handle.status(lt.status_flags_t.query_pieces)
    in_swarm = [False] * num_pieces
    downloaders = set()
    for peer in handle.get_peer_info():
        pid = peer.pid.to_bytes()
        if pid.startswith(ORIGIN_PEER_ID_PREFIX):
            continue
        if not peer.flags & lt.peer_info.seed and not peer.pid.is_all_zeros():
            downloaders.add(pid)
        for piece, held in enumerate(peer.pieces):
            if held:
                in_swarm[piece] = True
    return SwarmView(list(status.pieces) or [False] * num_pieces, in_swarm, 1 + len(downloaders)), downloaders


class ShareSteering:
    """Re-prioritises one download's pieces while it runs (module docstring)."""

    def __init__(self, num_pieces: int, slot: int) -> None:
        self._num_pieces = num_pieces
        self._slot = slot
        self._swarm = slot + 1
        self._seen: set[bytes] = set()
        self._applied: list[int] | None = None

    def initial(self) -> list[int]:
        """Priorities before anything is known: the share of a swarm of ``slot + 1``."""
        view = SwarmView([False] * self._num_pieces, [False] * self._num_pieces, self._swarm)
        self._applied = share_priorities(self._slot, self._swarm, view)
        return self._applied

    @property
    def alone(self) -> bool:
        """No other downloader of this torrent seen so far."""
        return not self._seen

    def step(self, handle: lt.torrent_handle, apply: bool = True) -> None:
        """Look at the swarm and, with ``apply``, set new priorities if they changed (worker
        thread only)."""
        view, downloaders = observe(handle, self._num_pieces)
        if all(view.have):
            return
        self._seen |= downloaders
        self._swarm = max(self._swarm, 1 + len(self._seen))
        if not apply:
            self._applied = None  # someone else set them: apply ours again when allowed
            return
        priorities = share_priorities(self._slot, self._swarm, view)
        if priorities != self._applied:
            handle.prioritize_pieces(priorities)
            self._applied = priorities

    async def run(
        self, lookup: Callable[[], lt.torrent_handle | None], hurrying: Callable[[], bool],
        on_shared: Callable[[], None],
    ) -> None:
        """Steer the torrent ``lookup`` finds until cancelled (the download is over) or it
        leaves the session. While ``hurrying()`` (a reader's window owns the priorities) it
        only looks, until it sees another downloader: then ``on_shared()`` ends the hurry."""
        with contextlib.suppress(RuntimeError):  # the torrent was removed
            while True:
                await asyncio.sleep(POLL_INTERVAL)
                handle = lookup()
                if handle is None:
                    continue
                held = hurrying()
                await asyncio.to_thread(self.step, handle, not held)
                if held and not self.alone:
                    on_shared()
                    await asyncio.to_thread(self.step, handle)
