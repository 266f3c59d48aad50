"""kraken.core.ranges: the one parser of read ranges and of upload chunks' Content-Range."""
from __future__ import annotations

import pytest

from kraken.core.ranges import ByteRange, RangeNotSatisfiable, parse_content_range, parse_range


def test_read_ranges_resolve_against_the_size() -> None:
    assert parse_range("bytes=2-5", 10) == ByteRange(2, 5, 10)
    assert parse_range("Bytes = 7 -", 10) == ByteRange(7, 9, 10)  # unit case-insensitive, spaces allowed
    assert parse_range("bytes=-30", 10) == ByteRange(0, 9, 10)  # a suffix longer than the resource
    assert parse_range("bytes=0-1,4-5", 10) is None  # multi-range: the whole resource
    assert parse_range("bytes=5-3", 10) is None  # malformed: ignored
    assert parse_range("bytes=-", 10) is None


@pytest.mark.parametrize("header,size", [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)])
def test_unsatisfiable_ranges_name_the_size(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as e:
        parse_range(header, size)
    assert e.value.content_range == f"bytes */{size}"


def test_content_ranges() -> None:
    assert parse_content_range("0-99") == (0, 99)
    assert parse_content_range("bytes 100-199/*") == (100, 199)
    assert parse_content_range("bytes=5-/300") == (5, None)
    assert parse_content_range("7-") == (7, None)
    for bad in ("", "abc", "5-1", "-5"):
        with pytest.raises(ValueError):
            parse_content_range(bad)
