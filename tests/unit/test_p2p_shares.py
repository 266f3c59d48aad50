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


def shares(swarm: int, slots: int, num_pieces: int = 64) -> list[list[int]]:
    return [[p for p, prio in enumerate(share_priorities(slot, swarm, view(num_pieces))) if prio == SHARE_PRIORITY]
            for slot in range(slots)]


def test_the_slots_of_a_swarm_partition_the_pieces() -> None:
    for swarm in (1, 2, 4, 8, 16):
        owned = shares(swarm, swarm)
        assert sorted(p for share in owned for p in share) == list(range(64))
        assert {len(share) for share in owned} == {64 // swarm}


def test_an_agent_seeing_more_than_half_of_the_swarm_lands_on_the_same_share() -> None:
    assert shares(11, 16) == shares(16, 16)
    assert shares(3, 4) == shares(4, 4)


def test_other_swarm_sizes_never_share_a_piece_twice() -> None:
    for swarm in (3, 5, 6):
        owned = [p for share in shares(swarm, swarm, 61) for p in share]
        assert len(owned) == len(set(owned))


def test_a_later_wave_wraps_around_the_same_shares() -> None:
    assert share_priorities(9, 4, view(8)) == share_priorities(1, 4, view(8))


def test_pieces_a_peer_holds_come_before_other_agents_origin_only_pieces() -> None:
    priorities = share_priorities(0, 4, view(8, have={0}, in_swarm={2, 3}))
    assert priorities == [SHARE_PRIORITY, SHARE_PRIORITY, SWARM_PRIORITY, SWARM_PRIORITY,
                          OTHERS_PRIORITY, OTHERS_PRIORITY, OTHERS_PRIORITY, OTHERS_PRIORITY]


def test_no_piece_is_ever_skipped() -> None:
    # Priority 0 would let libtorrent call the torrent finished with pieces missing.
    for slot in range(5):
        assert min(share_priorities(slot, 5, view(7, in_swarm={3}))) >= OTHERS_PRIORITY >= 1


def test_before_anything_is_known_the_swarm_is_the_slot_plus_one() -> None:
    assert ShareSteering(4, 0).initial() == [SHARE_PRIORITY] * 4
    assert ShareSteering(4, 1).initial() == [OTHERS_PRIORITY] * 2 + [SHARE_PRIORITY] * 2
