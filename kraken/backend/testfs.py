"""The ``testfs`` backend: objects on a testfs server, under ``root`` in ``name_path`` layout.

It owns its HTTP client (create it inside a running loop, ``close()`` it). Failures are
reported in the backend's terms: a missing object is :class:`BackendNotFound`, a path testfs
refuses (400) is :class:`InvalidName`, and anything else (connection refused, timeout, 5xx,
truncated body) is :class:`BackendError`, which callers treat as "retry later".
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from kraken.backend.base import Backend, BackendError, BackendNotFound, BlobInfo, InvalidName
from kraken.backend.namepath import NamePathKind, ObjectLayout
from kraken.backend.testfs_client import TestfsClient, TestfsNotFound
from kraken.http.client import HTTPStatusError, create_client
from kraken.http.config import HttpClientConfig, TLSConfig


@dataclass
class TestfsBackendConfig:
    """A testfs server; ``root`` is a path prefix inside it, so several backends can share one."""

    __test__ = False  # not a pytest test class despite the name

    addr: str
    root: str = ""
    name_path: NamePathKind = "identity"


class TestfsBackend(Backend):
    """A testfs server; the namespace is not part of the path (routing picks ``root``)."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, config: TestfsBackendConfig, http_config: HttpClientConfig,
                 tls: TLSConfig | None = None) -> None:
        self.addr = config.addr
        self.layout = ObjectLayout(config.root, config.name_path)
        self.http = create_client(http_config, tls)
        self.client = TestfsClient(config.addr, self.http)

    @contextmanager
    def _errors(self, op: str, name: str) -> Iterator[None]:
        try:
            yield
        except TestfsNotFound:
            raise BackendNotFound(f"{name}: not found on testfs {self.addr}") from None
        except HTTPStatusError as e:
            if e.status == 400:
                raise InvalidName(f"{name}: refused by testfs {self.addr}: {e.message}") from e
            raise BackendError(f"testfs {self.addr}: {op} {name}: {e}") from e
        except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError) as e:
            raise BackendError(f"testfs {self.addr}: {op} {name}: {e!r}") from e

    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        path = self.layout.path(name)
        with self._errors("stat", name):
            size = await self.client.stat(path)
        return None if size is None else BlobInfo(size)

    async def upload(self, namespace: str, name: str, src: Path) -> None:
        path = self.layout.path(name)
        with self._errors("upload", name):
            await self.client.upload_file(path, src)

    async def upload_bytes(self, namespace: str, name: str, data: bytes) -> None:
        path = self.layout.path(name)
        with self._errors("upload", name):
            await self.client.upload_bytes(path, data)

    async def download(self, namespace: str, name: str, dst: Path) -> None:
        path = self.layout.path(name)
        with self._errors("download", name):
            await self.client.download(path, dst)

    async def download_bytes(self, namespace: str, name: str) -> bytes:
        path = self.layout.path(name)
        with self._errors("download", name):
            return await self.client.download_bytes(path)

    async def list(self, prefix: str) -> list[str]:
        directory = self.layout.list_dir(prefix)
        if directory is None:
            return []
        with self._errors("list", prefix):
            paths = await self.client.list(directory)
        return self.layout.names(paths, prefix)

    async def close(self) -> None:
        await self.http.close()
