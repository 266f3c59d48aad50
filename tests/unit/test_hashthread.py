"""ThreadedHasher: the digest of everything given, hashed on a thread of its own."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kraken.core.hashthread import RangeHasher, ThreadedHasher


def test_digest_equals_hashlib_over_batches_and_a_tail() -> None:
    data = os.urandom(5 * 1024 * 1024 + 12345)
    hasher = ThreadedHasher(hashlib.sha256(), batch=64 * 1024, max_batches=2)
    for start in range(0, len(data), 8192):
        hasher.update(memoryview(data)[start:start + 8192])
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_small_input_never_starts_a_thread() -> None:
    hasher = ThreadedHasher(hashlib.sha256())
    hasher.update(b"abc")
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_close_after_a_failed_transfer_ends_the_thread() -> None:
    hasher = ThreadedHasher(hashlib.sha256(), batch=1024, max_batches=1)
    for _ in range(50):
        hasher.update(b"x" * 1024)
    hasher.close()
    assert hasher._thread is None


def test_range_hasher_hashes_ranges_landing_out_of_order(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 777)
    path = tmp_path / "blob"
    path.write_bytes(b"\0" * len(data))
    hasher = RangeHasher(path, len(data), hashlib.sha256())
    ranges = [(start, min(300_000, len(data) - start)) for start in range(0, len(data), 300_000)]
    for start, length in reversed(ranges):  # the first range lands last: nothing is hashed before it
        with open(path, "r+b") as f:
            f.seek(start)
            f.write(data[start:start + length])
        hasher.range_done(start, length)
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_range_hasher_of_an_empty_file_and_a_failed_download(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert RangeHasher(tmp_path / "empty", 0, hashlib.sha256()).hexdigest() == hashlib.sha256().hexdigest()
    (tmp_path / "partial").write_bytes(b"\0" * 100)
    failed = RangeHasher(tmp_path / "partial", 100, hashlib.sha256())
    failed.range_done(50, 50)  # the first half never arrives
    failed.close()  # returns: the thread does not wait for it
