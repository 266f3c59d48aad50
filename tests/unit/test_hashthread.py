"""ThreadedHasher: the digest of everything given, hashed on a thread of its own."""
from __future__ import annotations

import hashlib
import os

from kraken.core.hashthread import ThreadedHasher


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
