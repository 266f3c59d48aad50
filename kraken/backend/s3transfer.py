"""The blocking pieces of S3 transfers, each one S3 request, run in the backend's transfer pool
(:meth:`kraken.backend.blocking.BlockingPool.run_bounded`).

Every piece opens and closes its own file handle, so a piece still running after its transfer
gave up (cancelled, or failed elsewhere) never writes through a descriptor that was closed and
reused meanwhile; at worst it writes into a temporary file that is already unlinked. Bodies
are streamed in :data:`CHUNK` pieces: no part or range is ever held in memory whole.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

#: Bytes read from a response body (written to the file) at a time.
CHUNK = 1 << 20


class FileSlice:
    """``length`` bytes of a file from ``start``, as a seekable body for one upload request.

    botocore reads it to sign and checksum the request and seeks back to its start to send
    (or resend, on a retry) it; it only needs ``read``, ``seek`` and ``tell``.
    """

    def __init__(self, path: Path, start: int, length: int) -> None:
        self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close(), as botocore expects of a body
        self._start = start
        self._length = length
        self._file.seek(start)

    def tell(self) -> int:
        return self._file.tell() - self._start

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.tell(), os.SEEK_END: self._length}[whence]
        position = min(max(base + offset, 0), self._length)
        self._file.seek(self._start + position)
        return position

    def read(self, size: int = -1) -> bytes:
        left = self._length - self.tell()
        return self._file.read(left if size is None or size < 0 else min(size, left))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FileSlice:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each part of a ``size``-byte object (one empty part for 0 bytes)."""
    if size == 0:
        return [(0, 0)]
    return [(start, min(part_size, size - start)) for start in range(0, size, part_size)]


def write_body(body: Any, path: Path, offset: int, expected: int) -> None:
    """Stream a GET response ``body`` into ``path`` at ``offset``; it must hold ``expected`` bytes."""
    written = 0
    with open(path, "r+b") as f:
        f.seek(offset)
        for chunk in body.iter_chunks(CHUNK):
            f.write(chunk)
            written += len(chunk)
    if written != expected:
        raise ConnectionError(f"response body ended after {written} of {expected} bytes")
