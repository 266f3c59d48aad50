"""The media type of a manifest read back from storage, before it is served.

The storage hands over bytes already checked against the digest (its ``open_manifest``
reads through the CAS's verified read, :meth:`kraken.store.cas.CAStore.verified_path`), so
here the manifest is only parsed: that is what yields the media type (``Content-Type``, the
``Accept`` check). Parsing a 4 MB manifest costs tens of MB for a moment, so it is done once
per digest (the media type is remembered; a digest names one content forever) and at most
:data:`PARSES` at a time, so many clients asking for a big manifest at once do not each hold
a parsed copy.
"""
from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from typing import BinaryIO

from kraken.core.digest import Digest
from kraken.log import get_logger
from kraken.registry.errors import RegistryError
from kraken.registry.manifest import ManifestError, parse_manifest

log = get_logger("kraken.registry")

PARSES = 2
MEDIA_TYPES = 4096


class StoredManifests:
    """The media types of manifests already parsed (a bounded LRU) and the parse limit."""

    def __init__(self, entries: int = MEDIA_TYPES) -> None:
        self._media_types: OrderedDict[Digest, str] = OrderedDict()
        self._entries = entries
        self._parses = asyncio.Semaphore(PARSES)

    async def check(self, f: BinaryIO, digest: Digest) -> tuple[str, int]:
        """``(media type, size)`` of the verified manifest in ``f``; MANIFEST_UNKNOWN when it
        does not parse."""
        size = os.fstat(f.fileno()).st_size  # of an open file: no disk access, no thread hop
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


def _media_type(f: BinaryIO, size: int, digest: Digest) -> str:
    try:
        return parse_manifest(os.pread(f.fileno(), size, 0)).media_type
    except ManifestError as e:
        log.error("stored manifest does not parse", digest=digest, error=str(e))
        raise RegistryError("MANIFEST_UNKNOWN", detail={"digest": str(digest), "reason": str(e)}) from None
