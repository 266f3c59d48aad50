"""Clients first: background work on a pushed blob waits for a lull in client transfers.

When an origin commits a blob it has work of its own to do on it: the metainfo's SHA-1 pass
over the whole blob, the write-back to the storage backend (the blob read, sent over
HTTP(S) and read back to verify it), and queued copies to other ring owners (a repair of an
owner that was down). Started at once, that work competes with the rest of the
same push (the next layers, the config blob, the manifest) for the CPU, the disk and the event
loop, and the client waits for it: in the push benchmark over TLS it was the last 0.1-0.3 s of
a 1.1 s push on two cores.

So this background work first waits until no client transfer (an upload, or a blob read
through the HTTP API: a pull through the proxy, an agent's fallback, a replica's read) has been
in progress on this origin for ``quiet`` seconds, and never longer than ``max_wait``: a busy
origin still makes progress,
and the write-back's durability window (the blob is already fsynced on this origin's disk)
grows by at most ``max_wait``. Anything a client is waiting for never waits here: the
tracker's request for a blob's metainfo generates it at once.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kraken.config import Duration


@dataclass
class ForegroundConfig:
    """``background:`` in the origin's config: how long background work on pushed blobs
    (write-back, metainfo generation ahead of any request) defers to client transfers.
    ``quiet``: the lull in transfers it waits for (0 = start at once); ``max_wait``: the longest
    it waits however busy the origin stays."""

    quiet: Duration = 0.5
    max_wait: Duration = 10.0

    def __post_init__(self) -> None:
        if self.quiet < 0 or self.max_wait < 0:
            raise ValueError("background.quiet and background.max_wait must be >= 0")


class ForegroundGate:
    """Counts client transfers in progress; :meth:`lull` waits for ``quiet`` seconds without one."""

    def __init__(self, config: ForegroundConfig) -> None:
        self._config = config
        self._active = 0
        self._last_end = float("-inf")

    @contextmanager
    def transfer(self) -> Iterator[None]:
        """Mark a client transfer (an upload's write or commit, a blob read) in progress."""
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            self._last_end = time.monotonic()

    async def lull(self) -> None:
        """Return once no client transfer has been in progress for ``quiet`` seconds, or after
        ``max_wait`` seconds at the latest."""
        quiet = self._config.quiet
        deadline = time.monotonic() + self._config.max_wait
        while True:
            now = time.monotonic()
            idle = now - self._last_end
            if now >= deadline or (self._active == 0 and idle >= quiet):
                return
            wait = quiet - idle if self._active == 0 else quiet
            await asyncio.sleep(min(wait, deadline - now))
