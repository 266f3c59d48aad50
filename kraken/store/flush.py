"""Flushing a file being written to disk while it is still written, so that its final fsync
is short.

A durable upload is fsynced at commit (:meth:`kraken.store.cas.CAStore.commit`), before the
client is answered. Written through the page cache, the bytes of a large upload are mostly
still dirty then (the kernel starts writing back only past ``vm.dirty_background_ratio`` of
memory), so that fsync writes the whole blob while the client waits: about a tenth of a
second per 200 MiB here, a fifth of a push's tail. :class:`EarlyFlush` starts an
``fdatasync`` in a worker thread every :data:`FLUSH_EVERY` bytes, on a descriptor of its own,
while the next bytes are still arriving; the commit then waits for the one in flight and its
own fsync writes only the rest. Durability is unchanged: the commit's fsync is still what
guarantees it.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path

FLUSH_EVERY = 16 << 20


class EarlyFlush:
    """At most one flush of ``path`` in flight; :meth:`wait` before relying on the file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._unflushed = 0
        self._task: asyncio.Future[None] | None = None

    def written(self, count: int) -> None:
        """``count`` more bytes were written: start a flush once enough wait and none runs."""
        self._unflushed += count
        if self._unflushed < FLUSH_EVERY or (self._task is not None and not self._task.done()):
            return
        self._unflushed = 0
        self._task = asyncio.ensure_future(asyncio.to_thread(_datasync, self._path))
        # Its error (if any) is raised by wait(); one never waited for is not "never retrieved".
        self._task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def wait(self) -> None:
        """Until the flush in flight (if any) ended; raises its OSError."""
        if self._task is not None:
            task, self._task = self._task, None
            await task


def _datasync(path: Path) -> None:
    """``fdatasync`` the file through a descriptor of its own (the writer's may close meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # the upload ended meanwhile
        return
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


class ThreadFlush:
    """:class:`EarlyFlush` for a file written by a worker thread (a backend download): each
    flush runs on a short-lived thread of its own, at most one at a time, so the writer never
    waits for the disk. :meth:`wait` before the file is imported; the import's fsync is still
    what makes it durable."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._unflushed = 0
        self._thread: threading.Thread | None = None

    def written(self, count: int) -> None:
        self._unflushed += count
        if self._unflushed < FLUSH_EVERY or (self._thread is not None and self._thread.is_alive()):
            return
        self._unflushed = 0
        self._thread = threading.Thread(target=_datasync_quietly, args=(self._path,), name="flush", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _datasync_quietly(path: Path) -> None:
    """An early flush's failure is not the download's: the import's own fsync reports it."""
    with contextlib.suppress(OSError):
        _datasync(path)
