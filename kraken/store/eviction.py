"""Eviction from a :class:`~kraken.store.cas.CAStore`: one scan, one sweep, the victim rule pluggable.

A sweep lists the cache (:func:`scan`, least recently read first: a read touches the blob,
so its mtime is its last use), then asks a :data:`Rule` about each blob in that order, with
the bytes still cached, whether to evict it, keep it, or stop there. A blob read since the
scan keeps its place: its mtime is looked at again just before it goes. The component
brings the rule (what it must never evict, how idle is too idle) and the delete (the agent
stops seeding first); see ``kraken.origin.cleanup`` and ``kraken.agent.cleanup``.
"""
from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from kraken.core.digest import Digest
from kraken.store.cas import CAStore


@dataclass(frozen=True)
class Entry:
    digest: Digest
    last_access: float  # mtime: set when the blob entered the cache, bumped by CAStore.touch
    size: int


class Verdict(enum.Enum):
    EVICT = "evict"
    KEEP = "keep"
    STOP = "stop"  # nothing from here on (entries come least recently read first)


#: What to do with ``entry`` while ``usage`` bytes are still cached.
Rule = Callable[[Entry, int], Verdict]

#: How a victim leaves: True if it was there to delete.
Delete = Callable[[Digest], Awaitable[bool]]


@dataclass(frozen=True)
class Sweep:
    evicted: list[Entry]
    usage: int  # bytes still cached, as of the scan


def scan(store: CAStore) -> list[Entry]:
    """Every cached blob, least recently read first (blocking: run it in a worker thread)."""
    entries = []
    for digest in store.digests():
        try:
            st = store.path(digest).stat()
        except FileNotFoundError:
            continue
        entries.append(Entry(digest, st.st_mtime, st.st_size))
    entries.sort(key=lambda e: e.last_access)
    return entries


def idle_or_over(idle_before: float | None, max_usage: int, protected: Collection[Digest] = ()) -> Rule:
    """The rule both caches use: evict blobs last read before ``idle_before`` (None: none),
    then the least recently read while more than ``max_usage`` bytes are cached (0: no
    limit); never a ``protected`` one (it still counts towards the usage)."""

    def rule(entry: Entry, usage: int) -> Verdict:
        over = max_usage > 0 and usage > max_usage
        idle = idle_before is not None and entry.last_access < idle_before
        if not (idle or over):
            return Verdict.STOP
        return Verdict.KEEP if entry.digest in protected else Verdict.EVICT

    return rule


async def evict(store: CAStore, entries: list[Entry], rule: Rule, delete: Delete | None = None) -> Sweep:
    """Delete the blobs of ``entries`` (from :func:`scan`) that ``rule`` picks, through
    ``delete`` (default: the store's own delete, in a worker thread)."""
    usage = sum(e.size for e in entries)
    evicted = []
    for entry in entries:
        verdict = rule(entry, usage)
        if verdict is Verdict.STOP:
            break
        if verdict is Verdict.KEEP:
            continue
        if delete is None:
            gone = await asyncio.to_thread(_delete_unless_read, store, entry)
        else:
            gone = not await asyncio.to_thread(_read_since, store, entry) and await delete(entry.digest)
        if gone:
            usage -= entry.size
            evicted.append(entry)
    return Sweep(evicted, usage)


def _delete_unless_read(store: CAStore, entry: Entry) -> bool:
    """The look at the mtime and the delete in one worker call, so a read cannot fall between."""
    return not _read_since(store, entry) and store.delete(entry.digest)


def _read_since(store: CAStore, entry: Entry) -> bool:
    """Whether the blob was read (or replaced) since the scan, or is gone already."""
    try:
        return store.path(entry.digest).stat().st_mtime > entry.last_access
    except FileNotFoundError:
        return True
