"""Byte ranges of HTTP: the ``Range`` of a read, and the ``Content-Range`` of an upload chunk.

One parser of each, shared by every server that answers them (the registry API of proxy and
agent, testfs, the origin's upload API), so that 206 and 416 mean the same everywhere.

A read's ``Range`` is standard HTTP (``bytes=0-99``, ``bytes=100-``, ``bytes=-50``, the unit
case-insensitive) resolved against the resource's size. aiohttp's ``Request.http_range`` is
not used: it serves ``bytes=-0`` (an empty suffix, unsatisfiable per RFC 9110) as the whole
resource and refuses the optional whitespace this parser allows.

An upload chunk's ``Content-Range`` is ``start-end`` (some clients prefix ``bytes`` and
append ``/total``); what ``end`` means is the caller's: inclusive for the registry API,
exclusive (and optional) for the origin's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_CONTENT_RANGE_RE = re.compile(r"^\s*(?:bytes[ =])?\s*(\d+)\s*-\s*(\d*)\s*(?:/\s*(?:\d+|\*))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive of a resource of ``size`` bytes."""

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
        """The ``Content-Range`` of the 206 answer."""
        return f"bytes {self.start}-{self.end}/{self.size}"


class RangeNotSatisfiable(ValueError):
    """The range asks for no byte of the resource: answer 416 with :attr:`content_range`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable: the resource has {size} bytes")
        self.size = size
        self.content_range = f"bytes */{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range a GET asks for, or ``None`` to send the whole resource (200).

    Malformed and multi-range headers are ignored (RFC 9110 lets a server do so); a range
    that starts past the end, or an empty suffix, raises :class:`RangeNotSatisfiable`.
    """
    if not header:
        return None
    m = _RANGE_RE.match(header)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        start, end = max(0, size - suffix), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    if start >= size or end < start:
        raise RangeNotSatisfiable(size)
    return ByteRange(start, end, size)


def parse_content_range(header: str) -> tuple[int, int | None]:
    """``(start, end)`` of an upload chunk's ``Content-Range``; ``end`` is None when absent
    (``start-``). Malformed, or ``end`` before ``start``: ValueError."""
    m = _CONTENT_RANGE_RE.match(header)
    if m is None:
        raise ValueError(f"malformed Content-Range {header!r} (want start-end)")
    start, end = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    if end is not None and end < start:
        raise ValueError(f"Content-Range {header!r} ends before it starts")
    return start, end
