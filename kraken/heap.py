"""Giving freed heap memory back to the system, in every component (glibc's ``malloc_trim``).

Why: glibc keeps what a process frees inside its heaps (the main one and one arena per
thread that allocates) and returns it only when the free space sits at a heap's top. A
transfer frees plenty from the middle: libtorrent's 16 KiB disk and receive buffers, from
its network and disk threads, aiohttp's and the hashers' chunks. A 1 GiB pull left an agent at
105-134 MiB resident, of which ``malloc_trim(0)`` gave back 37-66 MiB at once (measured through
gdb; bench/memory.py). Capping the arenas (``MALLOC_ARENA_MAX=2``) did not move the figure;
keeping glibc's mmap threshold fixed (:data:`MMAP_THRESHOLD`) and trimming brought it to 68.

:func:`trimming` runs beside a component's servers (:func:`kraken.cli.run`): every
:data:`CHECK_INTERVAL` it reads the process's resident size and, when that has grown by
:data:`GROWTH` since the last trim, trims in a worker thread (the call walks every arena),
and again while it shrinks after that. An idle process is not trimmed at all; a busy one at
most once a second. Elsewhere than glibc (musl, macOS) there is no ``malloc_trim`` and this does nothing.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections.abc import AsyncIterator, Callable

from kraken.log import get_logger

log = get_logger("kraken.heap")

CHECK_INTERVAL = 1.0
#: Resident growth since the last trim that makes the next one worth its walk of the heaps.
GROWTH = 16 << 20
#: glibc's ``mallopt`` parameter and the value it keeps: allocations of 1 MiB and more (the
#: hashers' 4 MiB chunks) get their own mapping, returned when freed. Left alone, glibc raises
#: the threshold to the largest such block freed, and from then on those chunks come from the
#: heaps and stay there. glibc's initial 128 KiB made every 256 KiB socket read of asyncio a
#: mapping of its own: a 500 MiB push through the proxy took 2.23 s instead of 1.99 s.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
#: A trim that gave back less than this ends the trims that follow a transfer.
SETTLED = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")


def tune_glibc() -> Callable[[], int] | None:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` and return its ``malloc_trim(0)``;
    None, and nothing changed, where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


def resident_bytes() -> int:
    """This process's resident size (``/proc/self/statm``'s second field, in pages)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


async def _trim_on_growth(trim: Callable[[], int], interval: float, growth: int) -> None:
    """Trim when the resident size grew by ``growth`` since the last trim, then again each
    second it does not grow, until a trim gives back less than :data:`SETTLED`: what a
    transfer frees at its end (libtorrent lets go of its buffers over a few seconds) is
    returned too."""
    floor = last = resident_bytes()
    settling = False
    while True:
        await asyncio.sleep(interval)
        now = resident_bytes()
        grew, quiet, last = now - floor >= growth, now <= last, now
        if not (grew or (settling and quiet)):
            continue
        await asyncio.to_thread(trim)
        floor = last = resident_bytes()
        settling = grew or now - floor >= SETTLED
        log.debug("heap trimmed", before_mib=now >> 20, after_mib=floor >> 20)


@contextlib.asynccontextmanager
async def trimming(interval: float = CHECK_INTERVAL, growth: int = GROWTH) -> AsyncIterator[None]:
    """Trim the heap whenever the resident size grew by ``growth``, while the block runs."""
    trim = tune_glibc()
    if trim is None or not os.path.exists("/proc/self/statm"):
        yield
        return
    task = asyncio.create_task(_trim_on_growth(trim, interval, growth))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
