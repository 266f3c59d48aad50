"""Metainfo: piece length by size, a libtorrent-readable v1 torrent, a stable info-hash."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import libtorrent as lt
import pytest

from kraken.core.metainfo import (
    DEFAULT_PIECE_LENGTHS,
    EmptyBlobError,
    generate_metainfo,
    info_hash,
    piece_length_for,
)

MB = 1 << 20
GB = 1 << 30


def test_piece_length_picks_the_largest_threshold_reached() -> None:
    assert piece_length_for(0, DEFAULT_PIECE_LENGTHS) == 4 * MB
    assert piece_length_for(2 * GB - 1, DEFAULT_PIECE_LENGTHS) == 4 * MB
    assert piece_length_for(2 * GB, DEFAULT_PIECE_LENGTHS) == 8 * MB
    assert piece_length_for(8 * GB, DEFAULT_PIECE_LENGTHS) == 16 * MB
    assert piece_length_for(100 * GB, {0: MB, 10 * MB: 2 * MB, GB: 8 * MB}) == 8 * MB
    assert piece_length_for(20 * MB, {GB: 8 * MB, 10 * MB: 2 * MB, 0: MB}) == 2 * MB
    with pytest.raises(ValueError):
        piece_length_for(10, {100: MB})


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(2 * MB + 12345)
    hexname = hashlib.sha256(data).hexdigest()
    path = tmp_path / hexname
    path.write_bytes(data)
    return path, data


def test_metainfo_is_a_v1_torrent_of_the_blob(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    metainfo = generate_metainfo(path, path.name, MB)
    ti = lt.torrent_info(metainfo)
    assert ti.name() == path.name
    assert ti.total_size() == len(data)
    assert ti.piece_length() == MB
    assert ti.num_pieces() == 3
    assert not ti.info_hashes().has_v2()
    for i in range(3):
        assert ti.hash_for_piece(i) == hashlib.sha1(data[i * MB:(i + 1) * MB]).digest()
    assert set(lt.bdecode(metainfo)) == {b"info"}


def test_matches_what_libtorrent_itself_generates(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    creator = lt.create_torrent([lt.create_file_entry(path.name, len(data))], MB, lt.create_torrent.v1_only)
    lt.set_piece_hashes(creator, str(path.parent))
    expected = lt.bencode({b"info": creator.generate()[b"info"]})
    assert generate_metainfo(path, path.name, MB) == expected


def test_info_hash_is_sha1_of_the_info_dict_and_stable(blob: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = blob
    first = generate_metainfo(path, path.name, MB)
    expected = hashlib.sha1(lt.bencode(lt.bdecode(first)[b"info"])).hexdigest()
    assert info_hash(first) == expected
    # Another copy elsewhere, generated again: same bytes, same hash (origins agree).
    other = tmp_path / "copy"
    other.write_bytes(data)
    again = generate_metainfo(other, path.name, MB)
    assert again == first and info_hash(again) == expected
    assert info_hash(generate_metainfo(path, path.name, 4 * MB)) != expected


def test_empty_blob_has_no_metainfo(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(EmptyBlobError):
        generate_metainfo(path, "empty", MB)
