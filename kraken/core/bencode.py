"""Bencoding (BEP 3), the encoding of tracker responses and torrent files.

Only the encoder lives here: the tracker writes bencoded answers, while reading torrents is
libtorrent's job. Dictionary keys are sorted by their raw bytes, as the format requires, so
equal values always encode to equal bytes.
"""
from __future__ import annotations

from typing import Union

Bencodable = Union[int, bytes, str, list["Bencodable"], dict[bytes | str, "Bencodable"]]


def bencode(value: Bencodable) -> bytes:
    """The bencoding of ``value``; ``str`` is encoded as UTF-8 bytes."""
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _encode(value: Bencodable, out: bytearray) -> None:
    if isinstance(value, bool):  # a bool is an int to Python, but never meant as one here
        raise TypeError("cannot bencode a bool")
    if isinstance(value, int):
        out += b"i%de" % value
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out += b"%d:" % len(value)
        out += value
    elif isinstance(value, str):
        _encode(value.encode(), out)
    elif isinstance(value, (list, tuple)):
        out += b"l"
        for item in value:
            _encode(item, out)
        out += b"e"
    elif isinstance(value, dict):
        items = sorted(((_key(k), v) for k, v in value.items()), key=lambda kv: kv[0])
        if len({key for key, _ in items}) != len(items):
            raise ValueError("duplicate dictionary key (the same name as str and bytes)")
        out += b"d"
        for key, item in items:
            _encode(key, out)
            _encode(item, out)
        out += b"e"
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def _key(key: bytes | str) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    raise TypeError(f"bencoded dictionary keys are strings, not {type(key).__name__}")
