"""The proxy's manifests on its own disk, so clients are answered from a file, not memory.

A manifest read from an origin is streamed into a :class:`~kraken.store.cas.CAStore`
(verified against its digest on the way in) under ``<store.root>/manifests``, and read back
through the store's verified read (a file changed on disk is re-hashed, and quarantined and
fetched again if it fails); the route then sends it from there. The cache holds at most ``max_bytes`` (least recently
read evicted first; the newest entry stays even if it alone is bigger) and is emptied at
start, since it only copies what the origins have. Concurrent misses of one digest share
one download.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from kraken.core.digest import Digest
from kraken.store.cas import CAStore
from kraken.tasks import SingleFlight


class ManifestMissing(Exception):
    """Raised by a fetch: the origins have no such blob, or it is too big for a manifest."""


Fetch = Callable[[], AsyncIterator[bytes]]


class ManifestCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self._root = root
        self._max_bytes = max_bytes
        self._cas: CAStore | None = None
        self._sizes: OrderedDict[Digest, int] = OrderedDict()
        self._total = 0
        # One fill per digest at a time; callers asking meanwhile wait for it (a fill whose
        # callers all left is cancelled: nobody else would ever read it).
        self._fills: SingleFlight[Digest, bool] = SingleFlight(name="manifest-fill")

    async def start(self) -> None:
        """Create the store and drop what an earlier run left (its sizes are not known)."""

        def clear() -> CAStore:
            cas = CAStore(self._root, durable=False)
            for digest in list(cas.digests()):
                cas.delete(digest)
            for path in list(cas.upload_dir.iterdir()):
                path.unlink(missing_ok=True)
            return cas

        self._cas = await asyncio.to_thread(clear)

    @property
    def cas(self) -> CAStore:
        assert self._cas is not None, "manifest cache not started"
        return self._cas

    async def open(self, digest: Digest, fetch: Fetch) -> BinaryIO | None:
        """The manifest, opened from the cache; on a miss the chunks of ``fetch()`` fill it
        first (a digest mismatch raises :class:`~kraken.store.cas.DigestMismatch`). ``None``
        when the fetch raises :class:`ManifestMissing`."""
        f = await self._open_cached(digest)
        if f is None and await self._fills.run(digest, lambda: self._fill(digest, fetch)):
            f = await self._open_cached(digest)
        return f

    async def _open_cached(self, digest: Digest) -> BinaryIO | None:
        if digest not in self._sizes:
            return None
        self._sizes.move_to_end(digest)
        path = await self.cas.verified_path(digest)
        try:
            if path is not None:
                return await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            pass
        # Gone, or quarantined as corrupt: forget it, the caller fetches it again.
        self._total -= self._sizes.pop(digest, 0)
        return None

    async def _fill(self, digest: Digest, fetch: Fetch) -> bool:
        """Fetch the manifest into the cache; False when it is missing upstream."""
        if digest in self._sizes:  # a fill that ended since this caller looked
            return True
        uid = self.cas.create_upload()
        try:
            size = await self.cas.write(uid, fetch())
        except BaseException as e:
            await self.cas.abort(uid)
            if isinstance(e, ManifestMissing):
                return False
            raise
        await self.cas.commit(uid, digest, size)
        self._sizes[digest] = size
        self._total += size
        evicted = []
        while self._total > self._max_bytes and len(self._sizes) > 1:
            old, old_size = self._sizes.popitem(last=False)
            self._total -= old_size
            evicted.append(old)
        if evicted:
            await asyncio.to_thread(lambda: [self.cas.delete(d) for d in evicted])
        return True
