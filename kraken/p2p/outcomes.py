"""What callers of :class:`kraken.p2p.session.P2PSession` get back: a download's result and the
errors. Kept apart from the session so that every part of it (torrent records, completion)
can raise and build them without importing the session."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class P2PError(Exception):
    """The session could not do what was asked (listen, add, move, ...)."""


class DownloadError(P2PError):
    """A download failed (torrent or file error, removed, session closed)."""


class DownloadTimeout(DownloadError, TimeoutError):
    """A download did not complete within its timeout."""


@dataclass(frozen=True)
class DownloadResult:
    """A complete download; ``path`` is flushed to disk and the torrent is seeding."""

    info_hash: str
    path: Path
    size: int
    seconds: float
    downloaded: int  # payload bytes received, pieces fetched again after a hash failure included
    uploaded: int  # payload bytes sent to other peers while downloading
    downloaded_by_source: dict[str, int]  # {"origin": n, "peer": m}, adds up to `downloaded`
    hash_failures: int
