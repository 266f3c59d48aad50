"""The ``http`` backend: blobs read from a URL template, read-only (Kraken's ``http`` kind).

``download_url`` holds one ``%s``, replaced by the object's name (a blob's digest hex):
``https://files.example.com/blobs/%s``. A stat is a ``HEAD`` of that URL (404: absent); a
download is a ``GET`` streamed into the destination, retried with ``download_backoff`` when
the server cannot be reached or answers 5xx. Nothing can be written (Kraken's ``upload_url``
is accepted for compatibility and, as in Kraken, unused). The origin verifies every blob
against its digest before caching it.

Requests go through the component's HTTP client (``http_client:``), and an ``https`` URL is
verified against the component's ``tls.cas`` when it has them (a file server on Kraken's
PKI), against the system's CAs otherwise.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp

from kraken.backend.base import BackendContext, BackendError, BackendNotFound, BlobInfo
from kraken.backend.filetree import AtomicWriter
from kraken.backend.readonly import ReadOnly, read_capped
from kraken.config import Duration
from kraken.http.client import HTTPStatusError, create_client


@dataclass
class BackoffConfig:
    """Kraken's ``download_backoff``: retries of a failed download, off unless ``enabled``.
    The pause before retry ``n`` (from 0) is ``min(max_interval, initial_interval *
    multiplier**n)``, varied by +-``randomization_factor``."""

    enabled: bool = False
    initial_interval: Duration = 2.0
    randomization_factor: float = 0.05
    multiplier: float = 2.0
    max_interval: Duration = 30.0
    max_retries: int = 5

    def __post_init__(self) -> None:
        if self.initial_interval < 0 or self.max_interval < 0 or self.multiplier < 1:
            raise ValueError("download_backoff: intervals must be >= 0 and multiplier >= 1")
        if not 0 <= self.randomization_factor < 1 or self.max_retries < 0:
            raise ValueError("download_backoff: randomization_factor in [0, 1), max_retries >= 0")

    def pauses(self) -> list[float]:
        """The pauses between attempts (none when disabled)."""
        if not self.enabled:
            return []
        out = []
        for n in range(self.max_retries):
            base = min(self.max_interval, self.initial_interval * self.multiplier**n)
            out.append(base * (1 + self.randomization_factor * (2 * random.random() - 1)))
        return out


@dataclass
class HttpBackendConfig:
    """Objects at ``download_url % name``."""

    download_url: str
    #: Limit of one download, body included (Kraken's default: 3 minutes).
    download_timeout: Duration = 180.0
    download_backoff: BackoffConfig = field(default_factory=BackoffConfig)
    #: Accepted for Kraken configs; unused (the backend is read-only, as in Kraken).
    upload_url: str = ""

    def __post_init__(self) -> None:
        if self.download_url.count("%s") != 1 or "%" in self.download_url.replace("%s", "", 1).replace("%%", ""):
            raise ValueError("download_url must hold exactly one %s (the object's name), e.g. "
                             "https://files.example.com/blobs/%s")
        if self.download_timeout <= 0:
            raise ValueError("download_timeout must be > 0")


class HttpBackend(ReadOnly):
    """Objects at a URL template, read-only; the namespace is not part of the URL."""

    def __init__(self, config: HttpBackendConfig, context: BackendContext) -> None:
        self.config = config
        self.http = create_client(context.http_client, context.tls)
        self._timeout = aiohttp.ClientTimeout(total=config.download_timeout)

    def describe(self) -> str:
        return f"http {self.config.download_url}"

    def url(self, name: str) -> str:
        return self.config.download_url.replace("%s", quote(name, safe=":"), 1).replace("%%", "%")

    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        url = self.url(name)
        try:
            async with await self.http.request("HEAD", url, ok=(200, 404), timeout=self._timeout) as resp:
                if resp.status == 404:
                    return None
                return BlobInfo(int(resp.headers.get("Content-Length", "0")))
        except (HTTPStatusError, TimeoutError, aiohttp.ClientError, ConnectionError, ValueError) as e:
            raise BackendError(f"{self.describe()}: namespace {namespace!r}: stat {name}: {e}") from None

    @asynccontextmanager
    async def _get(self, namespace: str, name: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """The ``GET`` response of ``name``, after the retries ``download_backoff`` allows."""
        url = self.url(name)
        pauses = self.config.download_backoff.pauses()
        for attempt in range(len(pauses) + 1):
            try:
                resp = await self.http.request("GET", url, ok=(200, 404), retry=False, timeout=self._timeout)
            except (HTTPStatusError, TimeoutError, aiohttp.ClientError, ConnectionError) as e:
                transient = not isinstance(e, HTTPStatusError) or e.status >= 500
                if not transient or attempt == len(pauses):
                    raise BackendError(f"{self.describe()}: namespace {namespace!r}: download {name}: {e}") from None
                await asyncio.sleep(pauses[attempt])
                continue
            async with resp:
                if resp.status == 404:
                    raise BackendNotFound(f"{name}: not found at {url}")
                yield resp
            return

    async def download(self, namespace: str, name: str, dst: Path) -> None:
        try:
            async with self._get(namespace, name) as resp, AtomicWriter(dst, dst.parent) as out:
                # A body cut short raises (aiohttp checks Content-Length), so nothing is renamed.
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            raise BackendError(f"{self.describe()}: namespace {namespace!r}: download {name}: {e!r}") from None

    async def download_bytes(self, namespace: str, name: str) -> bytes:
        try:
            async with self._get(namespace, name) as resp:
                return await read_capped(resp, f"{self.describe()}: {name}")
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            raise BackendError(f"{self.describe()}: namespace {namespace!r}: download {name}: {e!r}") from None

    async def list(self, prefix: str) -> list[str]:
        """A URL template cannot be listed: none are listed."""
        return []

    async def close(self) -> None:
        await self.http.close()
