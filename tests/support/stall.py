"""A source file that holds whoever reads it until released: a named pipe (FIFO).

Opening a FIFO for reading blocks until a writer opens it, so an upload from one occupies its
backend worker thread for as long as the test wants, as a slow disk or a slow link would,
without faking the backend. Released, every reader sees an empty file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path


class Stall:
    """The FIFO at ``path``; :meth:`release` lets every reader, present and future, through."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self._released = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._open_for_readers, name="stall-release", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._released.set()

    def _open_for_readers(self) -> None:
        """Once released, keep opening and closing the write end: each open wakes the readers
        waiting then (a reader arriving later is woken by the next one)."""
        self._released.wait()
        while not self._done.is_set():
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no reader right now
                    raise
            self._done.wait(0.02)

    def close(self) -> None:
        self._released.set()
        self._done.set()
        self._thread.join()


@contextlib.contextmanager
def stalled_file(path: Path) -> Iterator[Stall]:
    stall = Stall(path)
    try:
        yield stall
    finally:
        stall.close()


def pool_threads(prefix: str) -> int:
    """How many threads a ``ThreadPoolExecutor`` named ``prefix`` has started."""
    return sum(1 for t in threading.enumerate() if t.name.startswith(f"{prefix}_"))
