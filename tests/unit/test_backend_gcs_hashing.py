"""The gcs backend hashes a download as it writes it, only while the bytes arrive in order."""
from __future__ import annotations

import hashlib
import io
import threading

from kraken.backend.gcs import _Guarded


def test_bytes_written_in_order_are_hashed() -> None:
    guarded = _Guarded(io.BytesIO(), threading.Event(), hashlib.sha256())
    for part in (b"abc", b"", b"defgh"):
        guarded.write(part)
    guarded.seek(0, io.SEEK_END)  # a seek that stays at the end keeps the hash good
    assert guarded.in_order
    assert guarded.hasher is not None and guarded.hasher.hexdigest() == hashlib.sha256(b"abcdefgh").hexdigest()


def test_a_seek_back_gives_up_the_running_hash() -> None:
    """Rewritten bytes would be hashed twice: the caller must hash the file instead."""
    guarded = _Guarded(io.BytesIO(), threading.Event(), hashlib.sha256())
    guarded.write(b"abcdef")
    guarded.seek(2)
    guarded.write(b"XY")
    assert not guarded.in_order
