"""Rendezvous hashing: owners are stable, spread evenly, and move little when hosts change."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from kraken.core.digest import Digest
from kraken.ring import HashRing, RingConfig

HOSTS = [f"origin{i}:15002" for i in range(10)]


def digests(n: int) -> list[Digest]:
    return [Digest("sha256", hashlib.sha256(str(i).encode()).hexdigest()) for i in range(n)]


def test_owner_count_is_capped_by_hosts() -> None:
    d = digests(1)[0]
    assert len(HashRing(HOSTS, 3).owners(d)) == 3
    assert len(set(HashRing(HOSTS, 3).owners(d))) == 3
    assert len(HashRing(HOSTS[:2], 3).owners(d)) == 2
    assert HashRing(["a:1", "a:1", "b:1"], 5).owners(d).count("a:1") == 1


def test_rejects_zero_replicas() -> None:
    with pytest.raises(ValueError):
        HashRing(HOSTS, 0)


def test_owners_are_stable_and_independent_of_host_order() -> None:
    ring = HashRing(HOSTS, 2)
    reordered = HashRing(list(reversed(HOSTS)), 2)
    for d in digests(200):
        assert ring.owners(d) == reordered.owners(d) == HashRing.from_config(RingConfig(HOSTS, 2)).owners(d)


def test_first_owners_are_balanced() -> None:
    ring = HashRing(HOSTS, 1)
    counts = Counter(ring.owners(d)[0] for d in digests(20000))
    mean = 20000 / len(HOSTS)
    assert set(counts) == set(HOSTS)
    assert all(0.85 * mean < c < 1.15 * mean for c in counts.values()), counts


def test_adding_a_host_moves_only_its_share_and_only_to_it() -> None:
    before = HashRing(HOSTS, 1)
    after = HashRing(HOSTS + ["origin10:15002"], 1)
    ds = digests(20000)
    moved = [d for d in ds if before.owners(d) != after.owners(d)]
    assert all(after.owners(d) == ["origin10:15002"] for d in moved)
    share = len(moved) / len(ds)
    assert 0.06 < share < 0.12, share  # about 1/11


def test_an_unhealthy_owner_leaves_the_others_and_the_next_ranked_stands_in_for_all() -> None:
    ring = HashRing(HOSTS, 2)
    for d in digests(100):
        full = HashRing(HOSTS, len(HOSTS)).owners(d)
        ring.set_healthy([h for h in HOSTS if h != full[0]])
        assert ring.owners(d) == full[1:2]  # no non-owner while an owner is healthy
        ring.set_healthy([h for h in HOSTS if h not in full[:2]])
        assert ring.owners(d) == full[2:3]
        ring.set_healthy(HOSTS)
        assert ring.owners(d) == full[:2]


def test_no_healthy_host_falls_back_to_all() -> None:
    ring = HashRing(HOSTS, 1)
    d = digests(1)[0]
    expected = ring.owners(d)
    ring.set_healthy([])
    assert ring.owners(d) == expected
