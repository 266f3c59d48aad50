"""kraken.store.eviction: the scan's order, a pluggable rule, the component's delete."""
from __future__ import annotations

import os
import time
from pathlib import Path

from kraken.core.digest import Digest
from kraken.store.cas import CAStore
from kraken.store.eviction import Entry, Verdict, evict, scan

NOW = time.time()


async def put(store: CAStore, size: int, read_ago: float) -> Digest:
    data = os.urandom(size)
    digest = Digest.of_bytes(data)
    await store.put_bytes(digest, data)
    os.utime(store.path(digest), (NOW - read_ago, NOW - read_ago))
    return digest


async def test_the_scan_lists_blobs_least_recently_read_first(tmp_path: Path) -> None:
    store = CAStore(tmp_path)
    new, old, mid = await put(store, 3, 10), await put(store, 5, 300), await put(store, 7, 100)
    await store.write_meta(old, "metainfo", b"torrent")  # metadata is not a blob
    assert [(e.digest, e.size) for e in scan(store)] == [(old, 5), (mid, 7), (new, 3)]


async def test_a_custom_rule_and_delete(tmp_path: Path) -> None:
    """The rule sees each entry with the bytes still cached; the delete decides what is gone."""
    store = CAStore(tmp_path)
    a, b, c, d = [await put(store, 10, age) for age in (400, 300, 200, 100)]
    seen: list[tuple[Digest, int]] = []

    def rule(entry: Entry, usage: int) -> Verdict:
        seen.append((entry.digest, usage))
        if entry.digest == c:
            return Verdict.STOP
        return Verdict.KEEP if entry.digest == b else Verdict.EVICT

    deleted: list[Digest] = []

    async def delete(digest: Digest) -> bool:
        deleted.append(digest)
        return store.delete(digest)

    sweep = await evict(store, scan(store), rule, delete)
    assert [e.digest for e in sweep.evicted] == [a] and deleted == [a]
    assert seen == [(a, 40), (b, 30), (c, 30)]  # nothing after STOP is asked about
    assert sweep.usage == 30 and store.exists(b) and store.exists(c) and store.exists(d)


async def test_a_blob_gone_before_its_turn_is_not_counted(tmp_path: Path) -> None:
    store = CAStore(tmp_path)
    digest = await put(store, 10, 500)
    entries = scan(store)
    store.delete(digest)
    sweep = await evict(store, entries, lambda _e, _u: Verdict.EVICT)
    assert sweep.evicted == [] and sweep.usage == 10
