"""Byte ranges: the ``Range`` header of blob reads and the ``Content-Range`` of chunked uploads.

Both are inclusive ``start-end`` pairs, but they differ: a read's Range is standard HTTP
(``bytes=0-99``, ``bytes=100-``, ``bytes=-50``) resolved against the blob's size, while an
upload chunk's Content-Range is the registry's own ``0-99`` (some clients prefix ``bytes``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from kraken.registry.errors import RegistryError

_READ_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_UPLOAD_RANGE_RE = re.compile(r"^\s*(?:bytes[ =])?\s*(\d+)\s*-\s*(\d+)\s*(?:/\s*(?:\d+|\*))?\s*$")


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive of a blob of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def range_header(self) -> str:
        """For asking an upstream server for exactly these bytes."""
        return f"bytes={self.start}-{self.end}"

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


def parse_read_range(header: str | None, size: int) -> ByteRange | None:
    """The single range a blob GET asks for, or ``None`` to send the whole blob.

    Malformed and multi-range headers are ignored (RFC 9110 lets a server do so); a range
    that starts past the end raises RANGE_INVALID (416) with ``Content-Range: bytes */size``.
    """
    if not header:
        return None
    m = _READ_RANGE_RE.match(header)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0:
            raise _unsatisfiable(size)
        start, end = max(0, size - suffix), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    if start >= size or end < start:
        raise _unsatisfiable(size)
    return ByteRange(start, end, size)


def _unsatisfiable(size: int) -> RegistryError:
    return RegistryError(
        "RANGE_INVALID", message="requested range not satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )


def parse_upload_range(header: str) -> tuple[int, int]:
    """``start-end`` (inclusive) of an upload chunk; malformed -> ValueError."""
    m = _UPLOAD_RANGE_RE.match(header)
    if m is None:
        raise ValueError(f"malformed Content-Range {header!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise ValueError(f"Content-Range {header!r} ends before it starts")
    return start, end


def upload_range_header(size: int) -> str:
    """The ``Range`` an upload response reports: ``0-<last byte>`` (``0-0`` when empty), as
    distribution sends it and docker/containers-image parse it."""
    return f"0-{max(size - 1, 0)}"
