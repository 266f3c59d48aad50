"""Staggered piece priorities: agents in different swarm slots put different pieces first."""
from __future__ import annotations

from kraken.p2p.pieces import staggered_priorities, van_der_corput


def test_van_der_corput_spreads_any_number_of_points() -> None:
    assert [van_der_corput(k) for k in range(8)] == [0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]


def test_eight_slots_put_eight_disjoint_eighths_first() -> None:
    firsts = []
    for slot in range(8):
        priorities = staggered_priorities(64, slot)
        assert len(priorities) == 64 and set(priorities) == {1, 7}
        top = {i for i, p in enumerate(priorities) if p == 7}
        assert len(top) == 8
        firsts.append(top)
    assert set().union(*firsts) == set(range(64))


def test_the_first_eighth_starts_at_the_slots_point_and_wraps() -> None:
    # Slot 1 starts half way; slot 7 at 7/8, its eighth wrapping past the end: 14, 15.
    assert staggered_priorities(16, 1) == [1] * 8 + [7, 7] + [1] * 6
    assert staggered_priorities(16, 7) == [1] * 14 + [7, 7]
    assert staggered_priorities(10, 3) == [1] * 7 + [7, 7] + [1]  # ceil(10 / 8) = 2 pieces


def test_few_pieces_are_all_downloaded() -> None:
    assert staggered_priorities(3, 0) == [7, 1, 1]
    assert staggered_priorities(1, 5) == [7]
