"""Which pieces an agent asks for first: swarm slots and staggered piece priorities.

When many agents start one download together, each picks the rarest pieces independently,
and at first every piece is equally rare (only the origin has it), so several agents often
ask the origin for the same piece at the same moment. The origin's upload is the scarcest
thing in the swarm; every duplicate it sends is time every agent waits.

So the tracker numbers the agents that ask for a blob's metainfo (their *slot*: 0, 1, 2, ...)
and each agent puts a different eighth of the blob first. Slot ``k`` starts at the fraction
``van_der_corput(k)`` of the pieces (0, 1/2, 1/4, 3/4, 1/8, ...), so however many agents come,
the starting points are spread evenly without anyone knowing the count. The eighth from there
gets priority 7, every other piece 1. libtorrent asks for priority 7 first (whatever its
rarity), so from the origin each agent takes its own eighth; priority 1 keeps plain
rarest-first for the rest. (A gradient 7, 6, 5, ... measured no better: libtorrent halves the
availability of priorities 4-6, so a piece one peer already holds ranks with pieces nobody
holds, and agents asked the origin for them.) Nothing is ever skipped (no priority 0): the
priorities only order the work. ``bench/fanout.py`` measures the effect.
"""
from __future__ import annotations

BANDS = 8
TOP_PRIORITY = 7
REST_PRIORITY = 1


def van_der_corput(k: int) -> float:
    """The k-th point of the base-2 van der Corput sequence: k's bits mirrored after the
    binary point (0, 0.5, 0.25, 0.75, 0.125, ...); any 2^m consecutive points are evenly spread."""
    value, denominator = 0.0, 1.0
    while k:
        denominator *= 2
        k, bit = divmod(k, 2)
        value += bit / denominator
    return value


def staggered_priorities(num_pieces: int, slot: int) -> list[int]:
    """Piece priorities for the agent in ``slot``: 7 for the eighth of the pieces starting at
    its point (wrapping around), 1 for the others."""
    start = int(van_der_corput(slot) * num_pieces)
    band = max(1, -(-num_pieces // BANDS))
    priorities = [REST_PRIORITY] * num_pieces
    for offset in range(band):
        priorities[(start + offset) % num_pieces] = TOP_PRIORITY
    return priorities
