"""kraken.core.bencode: libtorrent's encoder behind a check that refuses what bencoding has no
form for (libtorrent itself would encode ``True``, ``None`` or a tuple as something else)."""
from __future__ import annotations

import pytest

from kraken.core.bencode import bencode


def test_bencode_encodes_str_as_utf8_and_sorts_keys_by_their_bytes() -> None:
    assert bencode({"é": "é", b"Z": [], "a": {}}) == b"d1:Zle1:ade2:\xc3\xa92:\xc3\xa9e"
    assert bencode([-(1 << 63), (1 << 63) - 1]) == b"li-9223372036854775808ei9223372036854775807ee"


@pytest.mark.parametrize(
    "bad", [[True], {"a": None}, [1.5], (1, 2), bytearray(b"ab"), memoryview(b"ab"), {"a": [{"b": object()}]}]
)
def test_bencode_refuses_what_libtorrent_would_encode_wrongly(bad: object) -> None:
    with pytest.raises(TypeError):
        bencode(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1 << 63, -(1 << 63) - 1, {"a": {"b": 1, b"b": 2}}])
def test_bencode_refuses_integers_past_64_bits_and_duplicate_keys(bad: object) -> None:
    with pytest.raises(ValueError):
        bencode(bad)  # type: ignore[arg-type]
