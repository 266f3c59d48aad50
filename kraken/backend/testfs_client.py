"""Typed client for the testfs HTTP API (paths, not names: see kraken.backend.testfs).

It lives with the backends, not in ``kraken/testfs/``: the testfs backend is its one user, and
shared code (``kraken/backend/``) never imports a component package.

Bodies are streamed both ways: uploads read the source file in chunks in a worker thread,
downloads write chunks to a temp file beside the destination that is renamed into place
only once every byte has arrived, so the destination is never partial. Timeouts and retries
come from :class:`kraken.http.client.HttpClient`; streamed uploads are sent once (the caller
retries, e.g. the origin's write-back queue).
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiofiles
import aiofiles.os

from kraken.backend.filetree import AtomicWriter
from kraken.http.client import HttpClient

CHUNK = 1 << 20


class TestfsNotFound(Exception):
    """testfs has no file at this path."""

    __test__ = False  # not a pytest test class despite the name


class TestfsClient:
    """Talks to one testfs server at ``addr`` (``host:port`` or a base URL)."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, addr: str, http: HttpClient) -> None:
        self.base = http.base(addr)
        self.http = http

    def _url(self, endpoint: str, path: str) -> str:
        return f"{self.base}/{endpoint}/{quote(path, safe='/:')}"

    async def stat(self, path: str) -> int | None:
        """Size of the file at ``path``, or None if there is none."""
        async with await self.http.request("HEAD", self._url("files", path), ok=(200, 404)) as resp:
            if resp.status == 404:
                return None
            size = resp.headers.get("Size") or resp.headers.get("Content-Length")
            if size is None:
                raise ValueError(f"testfs HEAD {path}: no Size header")
            return int(size)

    async def upload_file(self, path: str, src: Path) -> None:
        """Stream file ``src`` to ``path`` (sent with its Content-Length, never held whole)."""
        size = (await aiofiles.os.stat(src)).st_size
        async with await self.http.request(
            "POST", self._url("files", path), ok=(201,),
            data=_file_chunks(src), headers={"Content-Length": str(size)},
        ):
            pass

    async def upload_bytes(self, path: str, data: bytes) -> None:
        async with await self.http.request("POST", self._url("files", path), ok=(201,), data=data):
            pass

    async def download(self, path: str, dst: Path) -> None:
        """Write the file at ``path`` to ``dst`` atomically; raises TestfsNotFound."""
        async with await self.http.request("GET", self._url("files", path), ok=(200, 404)) as resp:
            if resp.status == 404:
                raise TestfsNotFound(path)
            async with AtomicWriter(dst, dst.parent) as out:
                # A body cut short raises (aiohttp checks Content-Length), so nothing is renamed.
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)

    async def download_bytes(self, path: str) -> bytes:
        """Read a (small) file into memory; raises TestfsNotFound."""
        async with await self.http.request("GET", self._url("files", path), ok=(200, 404)) as resp:
            if resp.status == 404:
                raise TestfsNotFound(path)
            return await resp.read()

    async def list(self, prefix: str) -> list[str]:
        """Paths (relative to the testfs root) of the files under directory ``prefix``."""
        async with await self.http.request("GET", self._url("list", prefix)) as resp:
            paths = json.loads(await resp.read())
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError(f"testfs list {prefix!r}: expected a JSON list of paths")
        return paths


async def _file_chunks(src: Path) -> AsyncIterator[bytes]:
    async with aiofiles.open(src, "rb") as f:
        while chunk := await f.read(CHUNK):
            yield chunk
