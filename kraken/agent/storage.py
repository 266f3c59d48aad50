"""The agent's registry storage: tags from build-index, blobs and manifests from the P2P cache.

Read-only: the shared registry routes answer every write with UNSUPPORTED. Manifests are
blobs of the repository on the origins, so they come through the same P2P path as layers.
The storage is made with the app, before the agent runs: it reaches the cache and the
build-index client through the agent at each request.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import BinaryIO, Protocol, TypeVar

from kraken.agent.blobs import AgentBlobs, BlobUnavailable
from kraken.agent.streaming import LiveBlob
from kraken.buildindex.client import BuildIndexClient
from kraken.core.digest import Digest
from kraken.registry.errors import RegistryError
from kraken.registry.ranges import ByteRange
from kraken.registry.referrer_index import ReferrerDescriptor
from kraken.registry.storage import BlobReader, FileBlobReader, RegistryStorage, StreamBlobReader

T = TypeVar("T")


class AgentParts(Protocol):
    """What the storage reads from the running agent (:class:`kraken.agent.server.Agent`)."""

    @property
    def blobs(self) -> AgentBlobs: ...

    @property
    def build_index(self) -> BuildIndexClient: ...


class AgentStorage(RegistryStorage):
    def __init__(self, agent: AgentParts) -> None:
        self.agent = agent

    @property
    def blobs(self) -> AgentBlobs:
        return self.agent.blobs

    @property
    def build_index(self) -> BuildIndexClient:
        return self.agent.build_index

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        return await self.build_index.get_tag(f"{repo}:{tag}")

    async def list_tags(self, repo: str) -> list[str]:
        return await self.build_index.list_repository(repo)

    async def referrers(self, repo: str, subject: Digest) -> list[ReferrerDescriptor]:
        """From build-index, like tags: the same list the proxy answers."""
        return await self.build_index.list_referrers(repo, subject)

    async def stat_blob(self, repo: str, digest: Digest) -> int | None:
        """From the cache, else the torrent's size from the tracker: a HEAD downloads nothing."""
        return await self._unavailable_as_503(self.blobs.size(repo, digest))

    async def open_blob(self, repo: str, digest: Digest, byte_range: ByteRange | None) -> BlobReader | None:
        """The cached file; a whole cold blob streams while it downloads (a range waits for
        the verified file). A stream that fails is cut short by the blob route."""
        if byte_range is not None:
            path = await self._unavailable_as_503(self.blobs.fetch(repo, digest))
            return None if path is None else FileBlobReader(path, byte_range)
        blob = await self._unavailable_as_503(self.blobs.open(repo, digest))
        if isinstance(blob, LiveBlob):
            chunks = blob.chunks()
            return StreamBlobReader(chunks, chunks.aclose)
        return None if blob is None else FileBlobReader(blob)

    async def open_manifest(self, repo: str, digest: Digest, max_size: int) -> BinaryIO | None:
        """Stat first, so a layer asked for as a manifest is refused without a download.

        A cached manifest is opened on the loop: its path was just looked up (stat, verified
        read), so the open finds it in memory and costs what that stat did, where a worker
        thread would add a hop to every warm GET. A downloaded one is opened in a thread."""
        size = self.blobs.cached_size(digest)
        cached = size is not None
        if size is None:
            size = await self.stat_blob(repo, digest)
        if size is None or size > max_size:
            return None
        path = await self._unavailable_as_503(self.blobs.fetch(repo, digest))
        if path is None:
            return None
        return open(path, "rb") if cached else await asyncio.to_thread(open, path, "rb")

    @staticmethod
    async def _unavailable_as_503(call: Awaitable[T]) -> T:
        """A failed download is UNAVAILABLE (clients retry), never a 500."""
        try:
            return await call
        except BlobUnavailable as e:
            raise RegistryError("UNAVAILABLE", message=str(e)) from None
