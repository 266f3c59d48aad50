"""What every read-only backend (http, registry_blob, registry_tag) shares: writes fail with
:class:`~kraken.backend.base.ReadOnlyBackend`, naming the backend and the namespace."""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

from kraken.backend.base import Backend, ReadOnlyBackend


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
