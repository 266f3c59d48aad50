"""An HTTP client with timeouts on every call and bounded retries.

Retries apply only where they are safe: connection failures and 502/503/504 answers, for
requests whose body can be sent again (no body, or bytes). Streaming bodies are sent once.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import aiohttp

from kraken.log import get_logger

log = get_logger("kraken.http.client")

RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass
class ClientConfig:
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    total_timeout: float | None = None
    retries: int = 3
    backoff: float = 0.2
    backoff_max: float = 3.0
    # Connections open at once (aiohttp's default is 100). A relay holds one upstream
    # connection per client reading a blob, so this matches a server's default
    # http.max_connections: with fewer, slow readers would make every other read queue.
    max_connections: int = 1024
    # Bytes aiohttp reads ahead of a response's reader (its default is 64 KiB, which with the
    # socket reads on top came to about 0.5 MiB per stalled relayed stream). Smaller costs
    # no measurable throughput here (a 500 MiB GET through the proxy: 1.08 s vs 1.13 s) and
    # keeps 200 stalled readers of a blob relayed by the proxy within 150 MiB.
    read_buffer: int = 16 << 10


class HTTPStatusError(Exception):
    """A response with an unexpected status; carries the status and a slice of the body."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class HttpClient:
    """Owns one aiohttp session; create it inside a running loop and ``close()`` it."""

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or ClientConfig()
        timeout = aiohttp.ClientTimeout(
            total=self.config.total_timeout,
            sock_connect=self.config.connect_timeout,
            sock_read=self.config.read_timeout,
        )
        connector = aiohttp.TCPConnector(limit=self.config.max_connections)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, read_bufsize=self.config.read_buffer
        )

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self, method: str, url: str, *, ok: tuple[int, ...] = (200,), retry: bool = True, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        """Send a request and return the response (caller releases it) if its status is in ``ok``.

        Raises :class:`HTTPStatusError` for any other status, after retrying transient
        failures when the body can be replayed.
        """
        replayable = retry and not _is_stream(kwargs.get("data"))
        attempts = 1 + (self.config.retries if replayable else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await self.session.request(method, url, **kwargs)
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                if last:
                    raise
                log.warning("request failed, retrying", method=method, url=url, error=repr(e), attempt=attempt + 1)
            else:
                if resp.status in ok:
                    return resp
                body = (await resp.read()).decode(errors="replace")
                resp.release()
                if last or resp.status not in RETRY_STATUSES:
                    raise HTTPStatusError(method, url, resp.status, body)
                log.warning("transient status, retrying", method=method, url=url, status=resp.status)
            delay = min(self.config.backoff_max, self.config.backoff * 2**attempt)
            await asyncio.sleep(delay * (0.5 + random.random()))
        raise AssertionError("unreachable")


def _is_stream(data: Any) -> bool:
    return data is not None and not isinstance(data, (bytes, bytearray, str, dict))
