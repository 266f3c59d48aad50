"""What every read-only backend (http, registry_blob, registry_tag) shares: writes fail with
:class:`~kraken.backend.base.ReadOnlyBackend`, naming the backend and the namespace; bodies
read into memory are capped (:func:`read_capped`)."""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import aiohttp

from kraken.backend.base import MAX_IN_MEMORY, Backend, BackendError, ReadOnlyBackend


async def read_capped(resp: aiohttp.ClientResponse, what: str, limit: int = MAX_IN_MEMORY) -> bytes:
    """The body of ``resp``, or :class:`BackendError` (naming ``what``) once it passes ``limit``."""
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            raise BackendError(f"{what}: larger than {limit} bytes; refused")
    return bytes(buf)


class ReadOnly(Backend):
    """A backend that only reads; :attr:`~kraken.backend.base.Backend.read_only` is True."""

    read_only = True

    @abstractmethod
    def describe(self) -> str:
        """The backend's kind and address, for messages (``registry_blob index.docker.io``)."""

    async def upload(self, namespace: str, name: str, src: Path) -> None:
        raise self.refuse(namespace, name)

    async def upload_bytes(self, namespace: str, name: str, data: bytes) -> None:
        raise self.refuse(namespace, name)

    def refuse(self, namespace: str, name: str) -> ReadOnlyBackend:
        return ReadOnlyBackend(f"{self.describe()}: namespace {namespace!r}: cannot store {name}: "
                               "the backend is read-only (push to the upstream itself)")
