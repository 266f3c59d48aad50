"""Checking that everything a manifest references exists on the origins.

A tag must never point at an image that cannot be pulled, so before a tag is written the
manifest is read from the origins and every blob it references is stat'ed there; for a
manifest list / OCI index every child manifest is read, parsed and checked the same way,
recursively (the original resolved only the top level).
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from kraken.core.digest import Digest
from kraken.origin.client import BlobNotFound
from kraken.registry.manifest import ManifestError, parse_manifest


class BlobSource(Protocol):
    """What reference checking needs from the origins (an ``OriginCluster``)."""

    async def stat(self, namespace: str, digest: Digest) -> int | None: ...

    async def read_bytes(self, namespace: str, digest: Digest) -> bytes: ...


class InvalidManifest(Exception):
    """The tagged manifest (or one of its children) is not a valid, supported manifest."""


async def find_missing(
    origins: BlobSource, namespace: str, root: Digest, max_manifest_size: int, concurrency: int
) -> list[Digest]:
    """Return the sorted digests of every manifest or blob reachable from ``root`` that the
    origins lack (``[root]`` if the manifest itself is missing).

    Raises :class:`InvalidManifest` for a manifest that does not parse, is too big, or whose
    bytes do not match its digest.
    """
    limit = asyncio.Semaphore(concurrency)
    seen: set[Digest] = {root}
    missing: list[Digest] = []

    async def check_blob(digest: Digest) -> None:
        async with limit:
            size = await origins.stat(namespace, digest)
        if size is None:
            missing.append(digest)

    async def check_manifest(tasks: asyncio.TaskGroup, digest: Digest, media_type: str | None) -> None:
        async with limit:
            size = await origins.stat(namespace, digest)
            if size is None:
                missing.append(digest)
                return
            if size > max_manifest_size:
                raise InvalidManifest(f"manifest {digest} is {size} bytes, over the {max_manifest_size} byte limit")
            try:
                raw = await origins.read_bytes(namespace, digest)
            except BlobNotFound:
                missing.append(digest)
                return
        if Digest.of_bytes(raw, digest.algorithm) != digest:
            raise InvalidManifest(f"manifest {digest}: content does not match its digest")
        try:
            manifest = parse_manifest(raw, media_type)
        except ManifestError as e:
            raise InvalidManifest(f"manifest {digest}: {e}") from None
        for ref in manifest.references:
            if ref.digest in seen:
                continue
            seen.add(ref.digest)
            if ref.is_manifest:
                tasks.create_task(check_manifest(tasks, ref.digest, ref.media_type))
            else:
                tasks.create_task(check_blob(ref.digest))

    # One task group for the whole walk: the first failure cancels every other check, and
    # its exception surfaces as itself rather than nested in exception groups.
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(check_manifest(tasks, root, None))
    except ExceptionGroup as group:
        raise group.exceptions[0] from None
    return sorted(missing)
