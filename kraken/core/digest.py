"""Content digests (``sha256:<hex>``, ``sha512:<hex>``): parsing, validation and hashing.

Every digest that enters the system passes through :meth:`Digest.parse`, so a malformed
digest is rejected in one place. Hashing of large files runs in a worker thread and reads in
chunks, so it never blocks the event loop nor holds a blob in memory.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

CHUNK = 4 << 20

_HEX_LEN = {"sha256": 64, "sha512": 128}
# fullmatch, never "$": "$" also matches before a trailing newline, which would let
# "sha256:<63 hex>\n" through as a digest that names no content and breaks every path it enters.
_HEX_RE = re.compile(r"[a-f0-9]+")


class DigestError(ValueError):
    """Raised for a string that is not a valid, supported digest."""


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, value: str) -> Digest:
        algorithm, sep, hexpart = value.partition(":")
        if not sep:
            raise DigestError(f"invalid digest {value!r}: expected <algorithm>:<hex>")
        expected = _HEX_LEN.get(algorithm)
        if expected is None:
            raise DigestError(f"unsupported digest algorithm {algorithm!r} in {value!r}")
        if len(hexpart) != expected or not _HEX_RE.fullmatch(hexpart):
            raise DigestError(f"invalid {algorithm} hex in digest {value!r}")
        return cls(algorithm, hexpart)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)


def new_hasher(algorithm: str = "sha256") -> hashlib._Hash:
    if algorithm not in _HEX_LEN:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def hash_file_sync(path: Path, algorithm: str = "sha256") -> Digest:
    h = new_hasher(algorithm)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return Digest(algorithm, h.hexdigest())


async def hash_file(path: Path, algorithm: str = "sha256") -> Digest:
    """Hash a file in a worker thread (hashlib releases the GIL on large buffers)."""
    return await asyncio.to_thread(hash_file_sync, path, algorithm)
