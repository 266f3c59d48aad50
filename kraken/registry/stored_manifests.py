"""Checks on a manifest read back from storage, before it is served.

Every read hashes the file against its digest (in a worker thread, a chunk at a time), so a
corrupt copy is never served. Parsing is what yields the media type (``Content-Type``, the
``Accept`` check), and parsing a 4 MB manifest costs tens of MB for a moment: it is done
once per digest (the media type is remembered; a digest names one content forever) and at
most :data:`PARSES` at a time, so many clients asking for a big manifest at once do not
each hold a parsed copy.
"""
from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from typing import BinaryIO

from kraken.core.digest import Digest, new_hasher
from kraken.log import get_logger
from kraken.registry.errors import RegistryError
from kraken.registry.manifest import ManifestError, parse_manifest

log = get_logger("kraken.registry")

HASH_CHUNK = 64 << 10
PARSES = 2
MEDIA_TYPES = 4096


class StoredManifests:
    """The media types of manifests already parsed (a bounded LRU) and the parse limit."""

    def __init__(self, entries: int = MEDIA_TYPES) -> None:
        self._media_types: OrderedDict[Digest, str] = OrderedDict()
        self._entries = entries
        self._parses = asyncio.Semaphore(PARSES)

    async def check(self, f: BinaryIO, digest: Digest) -> tuple[str, int]:
        """``(media type, size)`` of the manifest in ``f``; MANIFEST_UNKNOWN when the bytes do
        not hash to ``digest`` or do not parse."""
        actual, size = await asyncio.to_thread(_hash, f, digest.algorithm)
        if actual != digest:
            log.error("stored manifest does not match its digest", digest=digest, actual=actual)
            self._media_types.pop(digest, None)
            raise _corrupt(digest, "stored copy is corrupt")
        media_type = self._media_types.get(digest)
        if media_type is None:
            async with self._parses:
                media_type = await asyncio.to_thread(_media_type, f, size, digest)
            self._media_types[digest] = media_type
            if len(self._media_types) > self._entries:
                self._media_types.popitem(last=False)
        else:
            self._media_types.move_to_end(digest)
        return media_type, size


def _hash(f: BinaryIO, algorithm: str) -> tuple[Digest, int]:
    hasher = new_hasher(algorithm)
    fd, offset = f.fileno(), 0
    while chunk := os.pread(fd, HASH_CHUNK, offset):
        hasher.update(chunk)
        offset += len(chunk)
    return Digest(algorithm, hasher.hexdigest()), offset


def _media_type(f: BinaryIO, size: int, digest: Digest) -> str:
    try:
        return parse_manifest(os.pread(f.fileno(), size, 0)).media_type
    except ManifestError as e:
        log.error("stored manifest does not parse", digest=digest, error=str(e))
        raise _corrupt(digest, str(e)) from None


def _corrupt(digest: Digest, reason: str) -> RegistryError:
    return RegistryError("MANIFEST_UNKNOWN", detail={"digest": str(digest), "reason": reason})
