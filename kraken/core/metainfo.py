"""Torrent metainfo for a blob: a libtorrent v1-only ``.torrent`` (``{b"info": ...}``).

v1-only keeps the metadata small, makes one tracker announce per event (hybrid torrents make
two) and gives a plain SHA-1 info-hash; the blob's sha256 is still checked separately before a
downloaded blob enters a cache. The torrent holds one file named after the digest hex, and
only the ``info`` dictionary (no creation date), so every origin generating metainfo for the
same blob and piece length produces the same bytes and the same info-hash (with ``p2p.tls``, as long as they embed the
same CA).

:func:`generate_metainfo` reads and hashes the whole file: call it through
``asyncio.to_thread``. Piece hashes are computed with :mod:`hashlib` rather than
``lt.set_piece_hashes`` because the latter holds the GIL while it hashes (measured: a 300 MB
file stalled the event loop for 0.27 s), whereas hashlib releases it; the output is identical.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import libtorrent as lt

# 4 MiB up to 2 GiB (256-512 pieces: 16 MiB pieces made a 1 GiB fan-out slower, see
# docs/BENCHMARKS.md), then larger so a torrent stays at a few hundred to a thousand pieces.
DEFAULT_PIECE_LENGTHS: dict[int, int] = {0: 4 << 20, 2 << 30: 8 << 20, 8 << 30: 16 << 20}


class EmptyBlobError(ValueError):
    """A zero-byte blob has no torrent (libtorrent rejects empty torrents); serve it directly."""


def piece_length_for(size: int, piece_lengths: dict[int, int]) -> int:
    """The piece length of the largest size threshold that ``size`` reaches.

    ``{0: 4MB, 1GB: 16MB}`` means 4 MB pieces below 1 GB and 16 MB pieces from 1 GB on.
    """
    reached = [threshold for threshold in piece_lengths if threshold <= size]
    if not reached:
        raise ValueError(f"no piece length configured for a blob of {size} bytes (add a 0 threshold)")
    return piece_lengths[max(reached)]


def generate_metainfo(path: Path, name: str, piece_length: int, root_cert: str = "") -> bytes:
    """Bencoded v1 torrent of the file at ``path``, whose single file is called ``name``;
    with ``root_cert`` (a CA's PEM, ``p2p.tls``) an SSL torrent rooted at that CA, which is
    part of the info dictionary and so of the info-hash."""
    size = path.stat().st_size
    if size == 0:
        raise EmptyBlobError(f"{path}: empty blob")
    creator = lt.create_torrent([lt.create_file_entry(name, size)], piece_length, lt.create_torrent.v1_only)
    if root_cert:
        creator.set_root_cert(root_cert)
    buf = bytearray(piece_length)
    view = memoryview(buf)
    with open(path, "rb") as f:
        for piece in range(creator.num_pieces()):
            n = f.readinto(buf)
            creator.set_hash(piece, hashlib.sha1(view[:n]).digest())
    torrent: dict[bytes, Any] = {b"info": creator.generate()[b"info"]}
    return lt.bencode(torrent)


def info_hash(metainfo: bytes) -> str:
    """SHA-1 hex of the bencoded ``info`` dictionary (the v1 info-hash trackers see)."""
    return str(lt.torrent_info(metainfo).info_hashes().v1)
