"""Eviction of cached blobs by idle time and disk usage, never of a blob that is the only copy.

A sweep runs in three steps so that a blob committed during the sweep cannot be evicted
before its write-back is queued: (1) list the cache, (2) ask which digests are protected
(being committed, write-back or replication pending), (3) delete unprotected candidates
from step 1. A blob committed after step 1 is not a candidate; one committed before it is
either still marked as being committed or already has its task queued when step 2 looks.
Steps 1 and 3 touch the disk and run in a worker thread.
"""
from __future__ import annotations

from dataclasses import dataclass

from kraken.core.digest import Digest
from kraken.store.cas import CAStore


@dataclass(frozen=True)
class Entry:
    digest: Digest
    last_access: float  # mtime: set at commit, bumped by CAStore.touch on every read
    size: int


def scan(store: CAStore) -> list[Entry]:
    """Every cached blob, least recently read first."""
    entries = []
    for digest in store.digests():
        try:
            st = store.path(digest).stat()
        except FileNotFoundError:
            continue
        entries.append(Entry(digest, st.st_mtime, st.st_size))
    entries.sort(key=lambda e: e.last_access)
    return entries


def evict(
    store: CAStore, entries: list[Entry], protected: set[Digest], idle_before: float, max_usage: int
) -> list[Digest]:
    """Delete blobs last read before ``idle_before``, then the oldest while usage exceeds ``max_usage``.

    ``entries`` comes from :func:`scan`; ``max_usage`` 0 means no limit. A blob read since the
    scan keeps its place: it is re-checked just before deletion.
    """
    usage = sum(e.size for e in entries)
    evicted = []
    for entry in entries:
        over = max_usage > 0 and usage > max_usage
        if entry.last_access >= idle_before and not over:
            break
        if entry.digest in protected:
            continue
        try:
            if store.path(entry.digest).stat().st_mtime > entry.last_access:
                continue
        except FileNotFoundError:
            continue
        if store.delete(entry.digest):
            usage -= entry.size
            evicted.append(entry.digest)
    return evicted
