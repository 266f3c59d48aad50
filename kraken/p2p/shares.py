"""Shares: each agent of a swarm takes from the origin only its own share of the blob.

The origin's upload is the swarm's bottleneck: every piece it sends twice is time every agent
waits. Static priorities (:mod:`kraken.p2p.pieces`) put a different eighth first at each agent,
but the eighths only partition the blob for 8 agents (4 agents leave half of it to
rarest-first, where they collide), and an agent done with its eighth asks the origin for
whatever is rarest: pieces another agent is fetching from the origin at that moment.

So, while an agent downloads, :class:`ShareSteering` looks at the swarm every
:data:`POLL_INTERVAL` and re-prioritises:

- the pieces of its share are the pieces ``p`` with ``p % n == slot % n``, where ``n`` is the
  number of downloaders it knows of (the peers in its peer list that are not seeds, itself
  included, never less than ``slot + 1``; it only grows): priority 7, first from anyone,
  which is the origin as long as nobody else has them;
- pieces some non-origin peer already holds: priority :data:`SWARM_PRIORITY`, rarest first
  among themselves;
- pieces only an origin holds and that belong to another agent's share: priority 1, the
  last thing asked for (libtorrent ranks a piece by availability x (8 - priority), so one copy at
  priority 1 comes after up to three copies at priority :data:`SWARM_PRIORITY`).

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


def share_priorities(slot: int, swarm: int, view: SwarmView) -> list[int]:
    """The piece priorities for the agent in ``slot`` of a swarm of ``swarm`` downloaders."""
    mine = slot % swarm
    priorities = []
    for piece, (have, in_swarm) in enumerate(zip(view.have, view.in_swarm, strict=True)):
        if have or piece % swarm == mine:
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

    def step(self, handle: lt.torrent_handle) -> None:
        """Look at the swarm and apply new priorities if they changed (worker thread only)."""
        view, downloaders = observe(handle, self._num_pieces)
        if all(view.have):
            return
        self._seen |= downloaders
        self._swarm = max(self._swarm, 1 + len(self._seen))
        priorities = share_priorities(self._slot, self._swarm, view)
        if priorities != self._applied:
            handle.prioritize_pieces(priorities)
            self._applied = priorities

    async def run(self, lookup: Callable[[], lt.torrent_handle | None]) -> None:
        """Steer the torrent ``lookup`` finds until cancelled (the download is over) or it
        leaves the session."""
        with contextlib.suppress(RuntimeError):  # the torrent was removed
            while True:
                await asyncio.sleep(POLL_INTERVAL)
                handle = lookup()
                if handle is not None:
                    await asyncio.to_thread(self.step, handle)
