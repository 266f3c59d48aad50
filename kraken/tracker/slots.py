"""Swarm slots: the tracker numbers the agents that ask for a blob's metainfo, 0, 1, 2, ...

An agent turns its slot into the part of the blob it asks for first
(:mod:`kraken.p2p.shares`), so agents starting together ask the origin for different pieces.
A blob nobody asked about for ``idle`` seconds starts again at 0 (the next wave of pulls);
at most ``max_entries`` blobs are remembered, least recently asked out first. Each tracker
counts on its own: with several trackers the spread is per tracker, which is still far from
every agent picking the same pieces.
"""
from __future__ import annotations

import time
from collections import OrderedDict

from kraken.core.digest import Digest


class SwarmSlots:
    def __init__(self, idle: float = 600.0, max_entries: int = 100_000) -> None:
        self._idle = idle
        self._max_entries = max_entries
        self._entries: OrderedDict[Digest, tuple[int, float]] = OrderedDict()

    def next(self, digest: Digest) -> int:
        """The slot of the agent asking now for ``digest``."""
        now = time.monotonic()
        count, last = self._entries.pop(digest, (0, now))
        if now - last > self._idle:
            count = 0
        self._entries[digest] = (count + 1, now)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return count
