"""Eviction rules: idle time, disk usage (least recently read first), protected blobs kept."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kraken.core.digest import Digest
from kraken.store.cas import CAStore
from kraken.store.eviction import evict, idle_or_over, scan

NOW = time.time()


@pytest.fixture
def store(tmp_path: Path) -> CAStore:
    return CAStore(tmp_path)


async def put(store: CAStore, size: int, read_ago: float) -> Digest:
    data = os.urandom(size)
    digest = Digest.of_bytes(data)
    await store.put_bytes(digest, data)
    os.utime(store.path(digest), (NOW - read_ago, NOW - read_ago))
    return digest


async def evicted(store: CAStore, protected: set[Digest], idle_before: float, max_usage: int) -> list[Digest]:
    sweep = await evict(store, scan(store), idle_or_over(idle_before, max_usage, protected))
    return [e.digest for e in sweep.evicted]


async def test_idle_blobs_go_and_protected_ones_stay(store: CAStore) -> None:
    old = await put(store, 10, read_ago=7200)
    pending = await put(store, 10, read_ago=7200)
    fresh = await put(store, 10, read_ago=60)
    await store.write_meta(old, "metainfo", b"torrent")

    assert await evicted(store, {pending}, idle_before=NOW - 3600, max_usage=0) == [old]
    assert not store.exists(old) and not store.meta_path(old, "metainfo").exists()
    assert store.exists(pending) and store.exists(fresh)


async def test_over_the_threshold_the_least_recently_read_go_first(store: CAStore) -> None:
    oldest = await put(store, 1000, read_ago=300)
    protected = await put(store, 1000, read_ago=200)
    middle = await put(store, 1000, read_ago=100)
    newest = await put(store, 1000, read_ago=10)
    assert await evicted(store, {protected}, idle_before=NOW - 3600, max_usage=2000) == [oldest, middle]
    assert sorted(store.digests()) == sorted([protected, newest])


async def test_a_blob_read_since_the_scan_is_kept(store: CAStore) -> None:
    digest = await put(store, 10, read_ago=7200)
    entries = scan(store)
    store.touch(digest)
    sweep = await evict(store, entries, idle_or_over(NOW - 3600, 0))
    assert sweep.evicted == [] and sweep.usage == 10
    assert store.exists(digest)
