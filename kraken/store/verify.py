"""Checking a blob's digest while its bytes stream past, for a server that relays them.

A relay (the proxy reading a blob from an origin) has sent the status and headers before the
body, so a wrong body can no longer be refused; it can only be cut short. :func:`verified`
therefore holds back each chunk until the next one arrives: the last chunk goes out only once
the whole body hashed to the digest, and on a mismatch the stream raises instead, so the
client sees a short body (its length is announced) and never a complete wrong one. Chunks
are hashed on the event loop: a relay's chunks are small (the proxy's are 64 KiB, about 35 µs
of sha256 here), and a worker-thread hop per chunk costs more than the hashing itself.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from kraken.core.digest import Digest
from kraken.store.cas import DigestMismatch


async def verified(
    chunks: AsyncIterator[bytes], digest: Digest, on_mismatch: Callable[[DigestMismatch], None] | None = None
) -> AsyncIterator[bytes]:
    """``chunks`` unchanged, except that the last one is replaced by :class:`DigestMismatch`
    (after ``on_mismatch`` is told) when the whole does not hash to ``digest``."""
    hasher = digest.hasher()
    held: bytes | None = None
    async for chunk in chunks:
        hasher.update(chunk)
        if held is not None:
            yield held
        held = chunk
    actual = Digest(digest.algorithm, hasher.hexdigest())
    if actual != digest:
        error = DigestMismatch(digest, actual)
        if on_mismatch is not None:
            on_mismatch(error)
        raise error
    if held is not None:
        yield held
