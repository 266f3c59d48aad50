"""The registry API's byte ranges, parsed by :mod:`kraken.core.ranges`.

A read's ``Range`` that cannot be satisfied is the registry's RANGE_INVALID (416, with
``Content-Range: bytes */size``); an upload chunk's ``Content-Range`` is inclusive and must
name its end (``0-99``).
"""
from __future__ import annotations

from kraken.core.ranges import ByteRange, RangeNotSatisfiable, parse_content_range, parse_range
from kraken.registry.errors import RegistryError

__all__ = ["ByteRange", "parse_read_range", "parse_upload_range", "upload_range_header"]


def parse_read_range(header: str | None, size: int) -> ByteRange | None:
    """The single range a blob GET asks for, or ``None`` to send the whole blob (see
    :func:`kraken.core.ranges.parse_range`); unsatisfiable: RANGE_INVALID."""
    try:
        return parse_range(header, size)
    except RangeNotSatisfiable as e:
        raise RegistryError(
            "RANGE_INVALID", message="requested range not satisfiable", headers={"Content-Range": e.content_range},
        ) from None


def parse_upload_range(header: str) -> tuple[int, int]:
    """``start-end`` (inclusive) of an upload chunk; malformed or without an end -> ValueError."""
    start, end = parse_content_range(header)
    if end is None:
        raise ValueError(f"Content-Range {header!r} names no end")
    return start, end


def upload_range_header(size: int) -> str:
    """The ``Range`` an upload response reports: ``0-<last byte>`` (``0-0`` when empty), as
    distribution sends it and docker/containers-image parse it."""
    return f"0-{max(size - 1, 0)}"
