"""Checking that everything a manifest references exists, before anything names it.

One walk shared by the proxy (before it stores a pushed manifest) and build-index (before it
writes a tag): a manifest's blobs are stat'ed, and for a manifest list / OCI index every child
manifest is read, verified, parsed and checked the same way, recursively. It is bounded, since
the input is a client's: at most ``max_references`` references per manifest (a manifest with
more is refused before any request is made), at most ``concurrency`` requests in flight, and
the walk stops at the first missing blob or invalid manifest (the other checks are cancelled),
so one manifest costs a bounded number of requests and a one-entry error.
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from kraken.core.digest import Digest
from kraken.registry.manifest import ManifestError, parse_manifest

#: The default cap on references (blobs or child manifests) per manifest. distribution (the
#: GitLab fork of the reference registry) has this knob as ``validation.manifests.referencelimit``
#: (MANIFEST_REFERENCE_LIMIT), off unless set; 200 here is well above real images (Docker
#: refuses images of more than 127 layers; multi-platform indexes have tens of entries).
DEFAULT_MAX_REFERENCES = 200
DEFAULT_CONCURRENCY = 16


class ManifestSource(Protocol):
    """Where the blobs and manifests of one repository (namespace) are looked up."""

    async def stat(self, digest: Digest) -> int | None:
        """The blob's size, or None when it is missing."""

    async def read(self, digest: Digest, max_size: int) -> bytes | None:
        """A manifest's bytes (at most ``max_size``), or None when it is missing."""


class InvalidManifest(Exception):
    """The manifest (or one of its children) is not a valid, supported manifest, is too big,
    or has more references than allowed."""


class MissingReference(Exception):
    """A manifest or blob reachable from the root is not in the source."""

    def __init__(self, digest: Digest) -> None:
        super().__init__(str(digest))
        self.digest = digest


class PushedRoot:
    """A source that answers the manifest being pushed from the request body, and everything
    else from ``source``: the push is checked completely before it is stored anywhere."""

    def __init__(self, source: ManifestSource, digest: Digest, raw: bytes) -> None:
        self._source = source
        self._digest = digest
        self._raw = raw

    async def stat(self, digest: Digest) -> int | None:
        return len(self._raw) if digest == self._digest else await self._source.stat(digest)

    async def read(self, digest: Digest, max_size: int) -> bytes | None:
        return self._raw if digest == self._digest else await self._source.read(digest, max_size)


async def find_missing(
    source: ManifestSource,
    root: Digest,
    *,
    max_manifest_size: int,
    max_references: int = DEFAULT_MAX_REFERENCES,
    concurrency: int = DEFAULT_CONCURRENCY,
    root_media_type: str | None = None,
) -> Digest | None:
    """The first manifest or blob reachable from ``root`` found missing (``root`` itself if it
    is), or None when everything is there.

    Raises :class:`InvalidManifest` for a manifest that does not parse, is too big, does not
    match its digest, or references more than ``max_references`` blobs and manifests.
    """
    try:
        await reachable(source, root, max_manifest_size=max_manifest_size, max_references=max_references,
                        concurrency=concurrency, root_media_type=root_media_type)
    except MissingReference as e:
        return e.digest
    return None


async def reachable(
    source: ManifestSource,
    root: Digest,
    *,
    max_manifest_size: int,
    max_references: int = DEFAULT_MAX_REFERENCES,
    concurrency: int = DEFAULT_CONCURRENCY,
    root_media_type: str | None = None,
) -> set[Digest]:
    """Every manifest and blob reachable from ``root``, ``root`` included (what a copy of the
    image elsewhere needs). Raises :class:`MissingReference` for the first one missing, and
    :class:`InvalidManifest` as :func:`find_missing` says.
    """
    limit = asyncio.Semaphore(concurrency)
    seen: set[Digest] = {root}

    async def check_blob(digest: Digest) -> None:
        async with limit:
            size = await source.stat(digest)
        if size is None:
            raise MissingReference(digest)

    async def check_manifest(tasks: asyncio.TaskGroup, digest: Digest, media_type: str | None) -> None:
        async with limit:
            size = await source.stat(digest)
            if size is None:
                raise MissingReference(digest)
            if size > max_manifest_size:
                raise InvalidManifest(f"manifest {digest} is {size} bytes, over the {max_manifest_size} byte limit")
            raw = await source.read(digest, max_manifest_size)
            if raw is None:
                raise MissingReference(digest)
        if Digest.of_bytes(raw, digest.algorithm) != digest:
            raise InvalidManifest(f"manifest {digest}: content does not match its digest")
        try:
            manifest = parse_manifest(raw, media_type)
        except ManifestError as e:
            raise InvalidManifest(f"manifest {digest}: {e}") from None
        if len(manifest.references) > max_references:
            raise InvalidManifest(
                f"manifest {digest} has {len(manifest.references)} references, over the limit of {max_references}")
        for ref in manifest.references:
            if ref.digest in seen:
                continue
            seen.add(ref.digest)
            if ref.is_manifest:
                tasks.create_task(check_manifest(tasks, ref.digest, ref.media_type))
            else:
                tasks.create_task(check_blob(ref.digest))

    # One task group for the whole walk: the first failure cancels every other check, and
    # surfaces as itself rather than nested in exception groups.
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(check_manifest(tasks, root, root_media_type))
    except ExceptionGroup as group:
        raise group.exceptions[0] from None
    return seen
