"""The pull-through backends: ``registry_blob`` (blobs and manifests by digest) and
``registry_tag`` (``repo:tag`` -> manifest digest) of an upstream registry.

With them an origin serves, for the namespaces routed to them, blobs that were never pushed
through Kraken, and build-index resolves tags the upstream has, so agents pull an upstream
image over P2P. Both are read-only (:class:`~kraken.backend.readonly.ReadOnly`).

``registry_blob`` names are sha256 hex digests. A digest is asked of the blobs endpoint, then
of the manifests endpoint (registries serve manifests only there). What it downloads is
hashed as it streams and must hash to the digest asked for: a body that does not (an upstream
or a middlebox serving the wrong bytes) is refused, so nothing unverified reaches the caller
(the origin, which verifies again before caching).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from kraken.backend.base import MAX_IN_MEMORY, BackendContext, BackendError, BackendNotFound, BlobInfo, InvalidName
from kraken.backend.filetree import AtomicWriter, atomic_write_bytes
from kraken.backend.readonly import ReadOnly, read_capped
from kraken.backend.upstream.client import MANIFEST_ACCEPT, RegistryUpstream
from kraken.backend.upstream.config import RegistryBackendConfig
from kraken.core.digest import Digest
from kraken.core.names import is_valid_name, is_valid_tag
from kraken.log import get_logger
from kraken.registry.manifest import ManifestError, parse_manifest

log = get_logger("kraken.backend")

_HEX = re.compile(r"[0-9a-f]{64}")
#: Bytes hashed per worker-thread call, so hashing a large blob never holds the loop.
HASH_BATCH = 1 << 20


class CorruptUpstreamBlob(BackendError):
    """The upstream sent bytes that do not hash to the digest asked for."""


class RegistryBlobBackend(ReadOnly):
    """Blobs and manifests of an upstream registry, by digest; the namespace is the repository."""

    def __init__(self, config: RegistryBackendConfig, context: BackendContext) -> None:
        self.upstream = RegistryUpstream("registry_blob", config, context)

    def describe(self) -> str:
        return self.upstream.name

    @staticmethod
    def _check(name: str) -> None:
        if not _HEX.fullmatch(name):
            raise InvalidName(f"{name[:100]!r}: registry_blob names are sha256 digests in hex")

    @staticmethod
    def _paths(namespace: str, name: str) -> list[tuple[str, dict[str, str]]]:
        return [(f"{namespace}/blobs/sha256:{name}", {}),
                (f"{namespace}/manifests/sha256:{name}", {"Accept": MANIFEST_ACCEPT})]

    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        self._check(name)
        with self.upstream.errors("stat", namespace, name):
            for path, headers in self._paths(namespace, name):
                async with await self.upstream.send("HEAD", namespace, path, ok=(200, 404), headers=headers) as resp:
                    if resp.status == 200:
                        return BlobInfo(int(resp.headers.get("Content-Length", "0")))
        return None

    async def _read(self, namespace: str, name: str, write: Callable[[bytes], Awaitable[None]]) -> None:
        """Stream the object to ``write``; raises before returning if it is not ``name``'s bytes."""
        for path, headers in self._paths(namespace, name):
            async with await self.upstream.send("GET", namespace, path, ok=(200, 404), headers=headers,
                                                long=True) as resp:
                if resp.status == 404:
                    continue
                await _verified_copy(resp, name, write, f"{self.describe()}: namespace {namespace!r}")
                return
        raise BackendNotFound(f"{name}: not in repository {namespace!r} of {self.describe()}")

    async def download(self, namespace: str, name: str, dst: Path) -> None:
        self._check(name)
        with self.upstream.errors("download", namespace, name):
            async with AtomicWriter(dst, dst.parent) as out:
                await self._read(namespace, name, out.write)

    async def download_bytes(self, namespace: str, name: str) -> bytes:
        self._check(name)
        buf = bytearray()

        async def keep(chunk: bytes) -> None:
            buf.extend(chunk)
            if len(buf) > MAX_IN_MEMORY:
                raise BackendError(f"{name}: larger than {MAX_IN_MEMORY} bytes; download it to a file")

        with self.upstream.errors("download", namespace, name):
            await self._read(namespace, name, keep)
        return bytes(buf)

    async def list(self, prefix: str) -> list[str]:
        """Registries cannot list blobs: none are listed."""
        return []

    async def close(self) -> None:
        await self.upstream.close()


async def _verified_copy(resp: aiohttp.ClientResponse, hex_digest: str,
                         write: Callable[[bytes], Awaitable[None]], where: str) -> None:
    hasher = hashlib.sha256()
    batch = bytearray()
    async for chunk in resp.content.iter_any():
        batch += chunk
        if len(batch) >= HASH_BATCH:
            data, batch = bytes(batch), bytearray()
            await asyncio.to_thread(hasher.update, data)
            await write(data)
    hasher.update(batch)
    got = hasher.hexdigest()
    if got != hex_digest:
        log.error("upstream blob failed verification; refused", upstream=where, digest=f"sha256:{hex_digest}",
                  got=f"sha256:{got}")
        raise CorruptUpstreamBlob(f"{where}: the upstream sent bytes hashing to sha256:{got} for sha256:{hex_digest}; "
                                  "refused")
    await write(bytes(batch))


class RegistryTagBackend(ReadOnly):
    """Tags of an upstream registry: ``repo:tag`` -> the digest of its manifest, as build-index
    stores them (the namespace is ignored: the name carries the repository)."""

    def __init__(self, config: RegistryBackendConfig, context: BackendContext) -> None:
        self.upstream = RegistryUpstream("registry_tag", config, context)

    def describe(self) -> str:
        return self.upstream.name

    @staticmethod
    def _split(name: str) -> tuple[str, str] | None:
        repo, sep, tag = name.rpartition(":")
        return (repo, tag) if sep and is_valid_name(repo) and is_valid_tag(tag) else None

    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        """The manifest's size; a name that cannot be a tag (build-index's readiness probe)
        checks that the upstream answers at all, and is never found."""
        parts = self._split(name)
        with self.upstream.errors("stat", namespace, name):
            if parts is None:
                await self.upstream.ping()
                return None
            repo, tag = parts
            async with await self.upstream.send("HEAD", repo, f"{repo}/manifests/{tag}", ok=(200, 404),
                                                headers={"Accept": MANIFEST_ACCEPT}) as resp:
                if resp.status == 404:
                    return None
                return BlobInfo(int(resp.headers.get("Content-Length", "0")))

    async def download_bytes(self, namespace: str, name: str) -> bytes:
        """``sha256:<hex>`` of the manifest the tag names upstream."""
        parts = self._split(name)
        if parts is None:
            raise InvalidName(f"{name[:200]!r}: registry_tag names are <repo>:<tag>")
        repo, tag = parts
        with self.upstream.errors("resolve", namespace, name):
            async with await self.upstream.send("GET", repo, f"{repo}/manifests/{tag}", ok=(200, 404),
                                                headers={"Accept": MANIFEST_ACCEPT}) as resp:
                if resp.status == 404:
                    raise BackendNotFound(f"{name}: no such tag in {self.describe()}")
                body = await read_capped(resp, f"{self.describe()}: {name}: manifest")
                content_type = resp.headers.get("Content-Type")
            try:
                parse_manifest(body, content_type)
            except ManifestError as e:
                raise BackendError(f"{self.describe()}: {name}: not a manifest Kraken serves: {e}") from None
        return str(Digest.of_bytes(body)).encode()

    async def download(self, namespace: str, name: str, dst: Path) -> None:
        data = await self.download_bytes(namespace, name)
        await asyncio.to_thread(atomic_write_bytes, data, dst, dst.parent)

    async def list(self, prefix: str) -> list[str]:
        """Tags of the repository ``prefix`` names (``repo:...``); other prefixes list nothing
        (a registry lists tags per repository only)."""
        repo, sep, _ = prefix.rpartition(":")
        if not sep or not is_valid_name(repo):
            return []
        with self.upstream.errors("list", repo, prefix):
            async with await self.upstream.send("GET", repo, f"{repo}/tags/list", ok=(200, 404)) as resp:
                if resp.status == 404:
                    return []
                body = json.loads(await read_capped(resp, f"{self.describe()}: {repo}: tag list"))
        tags = body.get("tags") if isinstance(body, dict) else None
        names = (f"{repo}:{t}" for t in tags or [] if isinstance(t, str))
        return sorted(n for n in names if n.startswith(prefix))

    async def close(self) -> None:
        await self.upstream.close()
