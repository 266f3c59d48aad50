"""Hashing bytes on a thread of their own while the threads that receive them go on.

A backend download written in order can be hashed as it is written, instead of in a second
pass over the file. Hashed inline, though, the hash still adds to the download's time: the
receiving thread stops reading the socket while it hashes (0.5 s per GiB of sha256 here).
:class:`ThreadedHasher` hands the bytes, in batches, to a thread of its own; hashlib releases
the GIL on large buffers, so on two cores the hash runs beside the transfer and finishes a
batch after the last byte arrived. :class:`RangeHasher` does the same for a file filled in
ranges, out of order, by several threads.
"""
from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path

#: Bytes collected before they are handed to the hashing thread.
BATCH = 1 << 20
#: Batches waiting to be hashed at most: the receiver blocks beyond this (memory is bounded).
MAX_BATCHES = 16


class ThreadedHasher:
    """``update`` from one thread; ``hexdigest`` once, when every byte was given.

    The hashing thread is started on the first batch and ends at :meth:`hexdigest` or
    :meth:`close` (call one of them: a transfer that fails calls ``close``).
    """

    def __init__(self, hasher: hashlib._Hash, batch: int = BATCH, max_batches: int = MAX_BATCHES) -> None:
        self._hasher = hasher
        self._batch = batch
        self._buffer = bytearray()
        self._queue: queue.Queue[bytearray | None] = queue.Queue(max_batches)
        self._thread: threading.Thread | None = None

    def update(self, data: bytes | memoryview) -> None:
        self._buffer += data
        if len(self._buffer) >= self._batch:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hasher", daemon=True)
            self._thread.start()
        # The filled buffer itself goes (no copy); the receiver fills a new one.
        self._queue.put(self._buffer)
        self._buffer = bytearray()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            self._hasher.update(batch)

    def hexdigest(self) -> str:
        """The hash of every byte given, once the thread hashed them all."""
        if self._thread is None:
            self._hasher.update(self._buffer)
        else:
            if self._buffer:
                self._hand_over()
            self._stop()
        self._buffer.clear()
        return self._hasher.hexdigest()

    def close(self) -> None:
        """End the thread without a result (the transfer failed)."""
        self._buffer.clear()
        if self._thread is not None:
            while True:  # make room for the end mark: the remaining batches are not wanted
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._stop()

    def _stop(self) -> None:
        assert self._thread is not None
        self._queue.put(None)
        self._thread.join()
        self._thread = None


class RangeHasher:
    """Hashes a file that other threads fill in ranges, out of order (parallel ranged GETs).

    A thread of its own reads back and hashes the file's longest complete prefix each time it
    grows (:meth:`range_done`), from the page cache the ranges were just written to; the hash
    is complete a moment after the last range instead of a whole pass over the file later.
    Call :meth:`hexdigest` once every range is done, or :meth:`close` when the download failed.
    """

    def __init__(self, path: Path, size: int, hasher: hashlib._Hash) -> None:
        self._path = path
        self._size = size
        self._hasher = hasher
        self._cond = threading.Condition()
        self._pending: dict[int, int] = {}  # start -> length of ranges done beyond the prefix
        self._prefix = 0  # bytes from the start that every done range covers
        self._stopped = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="range-hasher", daemon=True)
        self._thread.start()

    def range_done(self, start: int, length: int) -> None:
        """``length`` bytes at ``start`` are written (and their file handle closed)."""
        with self._cond:
            self._pending[start] = length
            while self._prefix in self._pending:
                self._prefix += self._pending.pop(self._prefix)
            self._cond.notify()

    def _run(self) -> None:
        hashed = 0
        try:
            with open(self._path, "rb") as f:
                while hashed < self._size:
                    with self._cond:
                        while self._prefix == hashed and not self._stopped:
                            self._cond.wait()
                        if self._stopped:
                            return
                        upto = self._prefix
                    f.seek(hashed)
                    while hashed < upto:
                        chunk = f.read(min(BATCH, upto - hashed))
                        if not chunk:
                            raise OSError(f"{self._path}: ends at {hashed} bytes, expected {upto}")
                        self._hasher.update(chunk)
                        hashed += len(chunk)
        except OSError as e:
            self._error = e

    def hexdigest(self) -> str:
        """The hash of the whole file, once the thread read it all; raises its OSError."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._hasher.hexdigest()

    def close(self) -> None:
        """End the thread without a result (the download failed)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()
