"""Client of the build-index HTTP API (used by the proxy, agents and replication).

Failover: the client knows every build-index of the cluster (a host list,
:mod:`kraken.http.hostlist`; they share one tag backend, so any answers any request) and sends
each request to this host's preferred one, skipping those that failed recently. A connection
failure, a timeout or a 502/503/504 moves the request to the next address at once, and the
address that failed is tried last for a while (doubling while it keeps failing); any other
answer (a 4xx included) is the answer. Only when every address failed does it pause
(``http_client.backoff``) and go round again, up to ``http_client.retries`` more times, as a
single-address client retries today. So losing one build-index costs a request one
connection attempt (a refused connection, or at most ``http_client.connect_timeout`` for a
host that is gone), and the next requests go straight to a live node.
"""
from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
from prometheus_client import Counter

from kraken.buildindex.hosts import BuildIndexHostsConfig
from kraken.core.digest import Digest
from kraken.http.client import RETRY_STATUSES, HttpClient, HTTPStatusError
from kraken.http.errors import error_extra, error_message
from kraken.http.health import PROBE_TIMEOUT, check_any, probe_timeout
from kraken.http.hostlist import HostList
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.registry.referrer_index import ReferrerDescriptor

log = get_logger("kraken.buildindex.client")

#: A referrers answer is bounded by build-index's ``max_referrers`` x ``max_referrer_size``
#: (4 MiB by default); a body past this is refused rather than read into memory.
MAX_REFERRERS_BODY = 64 << 20


class TagReferenceError(Exception):
    """build-index refused a tag (HTTP 400): the manifest references content the origins lack
    (``missing`` lists it), or the tag, digest or manifest is invalid (``missing`` is empty)."""

    def __init__(self, message: str, missing: list[Digest]) -> None:
        super().__init__(message)
        self.missing = missing


class ReferrerRefused(Exception):
    """build-index refused a referrer: ``limit`` is True for a full list or an oversized
    descriptor (HTTP 403), False for an invalid or missing manifest (HTTP 400)."""

    def __init__(self, message: str, limit: bool) -> None:
        super().__init__(message)
        self.limit = limit


def failover_counter(metrics: Metrics) -> Counter:
    """The metric a component's build-index client counts its failovers in."""
    return metrics.counter("kraken_build_index_failovers_total",
                           "build-index requests moved to the next build-index (connection failure, "
                           "timeout or 502/503/504)")


class BuildIndexClient:
    """``where``: a ``build_index:`` config, or one ``host:port``, or a list of them.
    ``hostname``: whose preference to follow (this host's by default)."""

    def __init__(self, where: BuildIndexHostsConfig | str | Sequence[str], http: HttpClient,
                 failovers: Counter | None = None, hostname: str | None = None) -> None:
        if isinstance(where, str):
            where = BuildIndexHostsConfig(addr=where)
        elif not isinstance(where, BuildIndexHostsConfig):
            where = BuildIndexHostsConfig(addrs=list(where))
        self.hosts = HostList(where, "build-index", hostname=hostname)
        self.http = http
        self._failovers = failovers

    async def _order(self) -> list[str]:
        await self.hosts.refresh()
        return self.hosts.order()

    async def _request(self, method: str, path: str, ok: tuple[int, ...] = (200,), *, once: bool = False,
                       **kwargs: Any) -> aiohttp.ClientResponse:
        """The first answer in ``ok`` from a build-index, failing over as the module says;
        ``once``: one round over the build-indexes, no retries after it."""
        config = self.http.config
        rounds = 1 if once else 1 + config.retries
        for round_ in range(rounds):
            addrs = await self._order()
            for i, addr in enumerate(addrs):
                try:
                    resp = await self.http.request(method, self.http.url(addr, path), ok=ok, retry=False, **kwargs)
                except (TimeoutError, aiohttp.ClientConnectionError, HTTPStatusError) as e:
                    if isinstance(e, HTTPStatusError) and e.status not in RETRY_STATUSES:
                        self.hosts.answered(addr)
                        raise
                    self.hosts.failed(addr)
                    if round_ == rounds - 1 and i == len(addrs) - 1:
                        raise
                    if len(addrs) > 1:
                        self._fail_over(addr, addrs[(i + 1) % len(addrs)], method, path, e)
                    else:
                        log.warning("build-index request failed, retrying", addr=addr, method=method, path=path,
                                    error=f"{type(e).__name__}: {e}", attempt=round_ + 1)
                    continue
                self.hosts.answered(addr)
                return resp
            delay = min(config.backoff_max, config.backoff * 2**round_)
            await asyncio.sleep(delay * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _fail_over(self, failed: str, to: str, method: str, path: str, error: Exception) -> None:
        if self._failovers is not None:
            self._failovers.inc()
        log.warning("build-index failed, trying the next one", failed=failed, next=to, method=method, path=path,
                    error=f"{type(error).__name__}: {error}")

    async def ping(self, timeout: float = PROBE_TIMEOUT) -> None:
        """Return once one build-index answers ``/health`` (each may take ``timeout``
        seconds); else ConnectionError naming every failure."""
        await check_any(self.http, await self._order(), "build-index", timeout)

    async def put_tag(self, tag: str, digest: Digest, *, replicate: bool = False) -> None:
        """Point ``tag`` (``repo:tag``) at manifest ``digest``; returns once it is durable.
        ``replicate``: also copy it to the remote clusters whose ``remotes`` match it."""
        path = f"/tags/{quote(tag, safe=':')}/digest/{digest}" + ("?replicate=true" if replicate else "")
        try:
            resp = await self._request("PUT", path)
        except HTTPStatusError as e:
            if e.status != 400:
                raise
            raise _reference_error(e.body) from None
        resp.release()

    async def origin(self) -> list[str]:
        """The origins of this build-index's cluster (``GET /origin``), for cross-cluster
        replication (kraken.buildindex.remotes)."""
        resp = await self._request("GET", "/origin")
        try:
            hosts = [h.strip() for h in (await resp.text()).split(",") if h.strip()]
        finally:
            resp.release()
        if not hosts:
            raise LookupError(f"build-index {self.hosts.config.describe()} names no origin")
        return hosts

    async def duplicate_replicate(self, tag: str, digest: Digest, delay: float, timeout: float) -> None:
        """Hand a neighbour ``tag``'s replication, ``delay`` seconds later: one try per
        build-index, each at most ``timeout`` seconds (a tag PUT waits for it)."""
        path = f"/internal/duplicate/remotes/tags/{quote(tag, safe=':')}/digest/{digest}"
        resp = await self._request("POST", path, once=True, json={"delay": delay},
                                   timeout=probe_timeout(self.http, timeout))
        resp.release()

    async def get_tag(self, tag: str) -> Digest | None:
        """The digest ``tag`` points at, or ``None`` if there is no such tag."""
        resp = await self._request("GET", f"/tags/{quote(tag, safe=':')}", ok=(200, 404))
        try:
            if resp.status == 404:
                return None
            return Digest.parse((await resp.text()).strip())
        finally:
            resp.release()

    async def list_repository(self, repo: str) -> list[str]:
        """Tag names (without ``repo:``) of ``repo``, sorted."""
        return await self._get_result(f"/repositories/{quote(repo, safe='')}/tags")

    async def list_prefix(self, prefix: str) -> list[str]:
        """Every ``repo:tag`` whose name starts with ``prefix``, sorted."""
        return await self._get_result(f"/list/{quote(prefix, safe=':')}")

    async def put_referrer(self, repo: str, subject: Digest, referrer: Digest) -> None:
        """Record manifest ``referrer`` (already on the origins) as a referrer of ``subject``."""
        try:
            resp = await self._request("PUT", f"/referrers/{quote(repo, safe='')}/{subject}/{referrer}")
        except HTTPStatusError as e:
            if e.status not in (400, 403):
                raise
            raise ReferrerRefused(e.message or "refused", limit=e.status == 403) from None
        resp.release()

    async def list_referrers(self, repo: str, subject: Digest) -> list[ReferrerDescriptor]:
        """The referrers of ``subject`` in ``repo`` (``[]`` when none). An oversized or
        malformed answer is an upstream failure (HTTPStatusError 502), like a 5xx."""
        url = f"/referrers/{quote(repo, safe='')}/{subject}"
        resp = await self._request("GET", url)
        try:
            body = bytearray()
            async for chunk in resp.content.iter_any():
                body += chunk
                if len(body) > MAX_REFERRERS_BODY:
                    raise HTTPStatusError("GET", url, 502, f"answer over {MAX_REFERRERS_BODY} bytes")
        finally:
            resp.release()
        try:
            return [ReferrerDescriptor.from_json(d) for d in json.loads(body)["manifests"]]
        except (ValueError, KeyError, TypeError) as e:
            raise HTTPStatusError("GET", url, 502, f"malformed referrers answer: {e}") from None

    async def _get_result(self, path: str) -> list[str]:
        resp = await self._request("GET", path)
        try:
            return list((await resp.json())["result"])
        finally:
            resp.release()


def _reference_error(body: str) -> TagReferenceError:
    """build-index's 400 ``{"error", "missing"}`` (any other body: nothing known missing)."""
    try:
        missing = [Digest.parse(d) for d in error_extra(body).get("missing", [])]
    except (ValueError, TypeError):
        missing = []
    return TagReferenceError(error_message(body) or "tag refused", missing)
