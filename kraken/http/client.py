"""An HTTP client with timeouts on every call and bounded retries (``http_client:`` section,
:class:`~kraken.http.config.HttpClientConfig`).

Retries apply only where they are safe: connection failures and 502/503/504 answers, for
requests whose body can be sent again (no body, or bytes). Streaming bodies are sent once.

The client also owns the scheme of the Kraken services it calls: every client of one
(origin, build-index, tracker, testfs, the health probe, announce URLs) builds its URLs with
:meth:`HttpClient.url` / :meth:`HttpClient.base`, so turning TLS on changes this module only:
with the component's ``tls:`` section calling over TLS, every URL is ``https`` and every
request is verified against ``tls.cas`` and ``tls.name`` (:mod:`kraken.http.tls`).
"""
from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
from yarl import URL

from kraken.http.config import HttpClientConfig, TLSConfig
from kraken.http.errors import error_message
from kraken.http.tls import client_context
from kraken.http.urls import base_url
from kraken.log import get_logger

log = get_logger("kraken.http.client")

RETRY_STATUSES = frozenset({502, 503, 504})
#: How much of an unexpected answer's body an error keeps: enough for any error JSON, and a
#: server (an upstream registry, a backend) cannot make the caller buffer more.
ERROR_BODY_LIMIT = 64 * 1024


class HTTPStatusError(Exception):
    """A response with an unexpected status: its status, body, and ``message``, the body's
    ``error`` field when it is Kraken's error format (:mod:`kraken.http.errors`)."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        self.message = error_message(body)
        super().__init__(f"{method} {url}: HTTP {status}: {self.message[:500]}")


def create_client(config: HttpClientConfig, tls: TLSConfig | None = None) -> HttpClient:
    """The one way Kraken makes an HTTP client: from a component's ``http_client:`` and
    ``tls:`` sections. Call it inside a running loop; ``close()`` the client."""
    return HttpClient(config, tls)


class HttpClient:
    """Owns one aiohttp session; made by :func:`create_client`."""

    def __init__(self, config: HttpClientConfig, tls: TLSConfig | None = None) -> None:
        self.config = config
        context = client_context(tls) if tls is not None else None
        #: Whether Kraken's services are called over TLS (``tls.cas`` given, ``tls.client``
        #: not disabled); then every request carries the context and ``tls.name``.
        self.secure = context is not None
        self._tls: dict[str, Any] = {}
        if context is not None:
            assert tls is not None
            self._tls = {"ssl": context, **({"server_hostname": tls.name} if tls.name else {})}
        timeout = aiohttp.ClientTimeout(
            total=self.config.total_timeout,
            sock_connect=self.config.connect_timeout,
            sock_read=self.config.read_timeout,
        )
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, ssl=context or True)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, read_bufsize=self.config.read_buffer
        )

    async def close(self) -> None:
        await self.session.close()

    def base(self, addr: str) -> str:
        """``scheme://host:port`` of the Kraken service at ``addr``, in this client's scheme."""
        return base_url(addr, secure=self.secure)

    def url(self, addr: str, path: str) -> str:
        """The URL of ``path`` (starting with ``/``) on the Kraken service at ``addr``."""
        return self.base(addr) + path

    async def request(
        self, method: str, url: str | URL, *, ok: tuple[int, ...] = (200,), retry: bool = True,
        retry_connect: bool = True, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        """Send a request and return the response (caller releases it) if its status is in ``ok``.

        ``url`` may be a ``yarl.URL`` built with ``encoded=True``, sent exactly as it is
        (the announce relay's raw query strings).

        Raises :class:`HTTPStatusError` for any other status, after retrying transient
        failures when the body can be replayed. ``retry_connect=False``: a connection that
        cannot be opened (refused, unreachable, connect timeout) fails at once, not retried: a
        caller with another host to try (a ring of origins) goes there instead, while a
        connection lost after it opened (a stale keep-alive) is still retried.
        """
        if self._tls and str(url).startswith("https:"):
            kwargs = {**self._tls, **kwargs}
        replayable = retry and not _is_stream(kwargs.get("data"))
        attempts = 1 + (self.config.retries if replayable else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await self.session.request(method, url, **kwargs)
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                if last or (not retry_connect and isinstance(e, _CONNECT_FAILURES)):
                    raise
                log.warning("request failed, retrying", method=method, url=url, error=repr(e), attempt=attempt + 1)
            else:
                if resp.status in ok:
                    return resp
                body = (await read_prefix(resp, ERROR_BODY_LIMIT)).decode(errors="replace")
                resp.release()
                if last or resp.status not in RETRY_STATUSES:
                    raise HTTPStatusError(method, str(url), resp.status, body)
                log.warning("transient status, retrying", method=method, url=url, status=resp.status)
            delay = min(self.config.backoff_max, self.config.backoff * 2**attempt)
            await asyncio.sleep(delay * (0.5 + random.random()))
        raise AssertionError("unreachable")


#: A connection that could not be opened at all (see ``retry_connect``).
_CONNECT_FAILURES = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


async def read_prefix(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most the first ``limit`` bytes of ``resp``'s body (the rest is never read)."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _is_stream(data: Any) -> bool:
    return data is not None and not isinstance(data, (bytes, bytearray, str, dict))
