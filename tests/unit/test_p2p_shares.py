"""Shares: which pieces an agent asks for first (kraken.p2p.shares)."""
from __future__ import annotations

from kraken.p2p.shares import (
    OTHERS_PRIORITY,
    SHARE_PRIORITY,
    SWARM_PRIORITY,
    ShareSteering,
    SwarmView,
    share_priorities,
)


def view(num_pieces: int, have: set[int] = frozenset(), in_swarm: set[int] = frozenset()) -> SwarmView:
    return SwarmView([p in have for p in range(num_pieces)], [p in in_swarm for p in range(num_pieces)], 0)


def test_the_slots_of_a_swarm_partition_the_pieces() -> None:
    for swarm in (1, 3, 4, 6, 8, 16):
        owners = [[p for p, prio in enumerate(share_priorities(slot, swarm, view(64))) if prio == SHARE_PRIORITY]
                  for slot in range(swarm)]
        assert sorted(p for share in owners for p in share) == list(range(64))
        assert max(map(len, owners)) - min(map(len, owners)) <= 1


def test_a_later_wave_wraps_around_the_same_shares() -> None:
    assert share_priorities(9, 4, view(8)) == share_priorities(1, 4, view(8))


def test_pieces_a_peer_holds_come_before_other_agents_origin_only_pieces() -> None:
    priorities = share_priorities(0, 4, view(8, have={0}, in_swarm={1, 2}))
    assert priorities == [SHARE_PRIORITY, SWARM_PRIORITY, SWARM_PRIORITY, OTHERS_PRIORITY,
                          SHARE_PRIORITY, OTHERS_PRIORITY, OTHERS_PRIORITY, OTHERS_PRIORITY]


def test_no_piece_is_ever_skipped() -> None:
    # Priority 0 would let libtorrent call the torrent finished with pieces missing.
    for slot in range(5):
        assert min(share_priorities(slot, 5, view(7, in_swarm={3}))) >= OTHERS_PRIORITY >= 1


def test_before_anything_is_known_the_swarm_is_the_slot_plus_one() -> None:
    assert ShareSteering(4, 0).initial() == [SHARE_PRIORITY] * 4
    assert ShareSteering(4, 1).initial() == [OTHERS_PRIORITY, SHARE_PRIORITY] * 2
