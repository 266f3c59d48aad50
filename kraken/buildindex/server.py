"""The build-index HTTP server.

Endpoints (tags are ``repo:tag``, percent-encoded in paths, e.g. ``test%2Fx:latest``):

* ``PUT /tags/{tag}/digest/{d}``: 200 once every reference of manifest ``d`` exists on the
  origins and the tag is in the backend; 400 ``{"error", "missing": [...]}`` otherwise
  (the first missing digest found; empty for an invalid manifest or one over
  ``max_manifest_references``).
* ``GET|HEAD /tags/{tag}``: 200 with body ``sha256:...``; 404.
* ``GET /repositories/{repo}/tags?limit=&offset=``: ``{"result": [tag names, sorted]}``.
* ``GET /list/{prefix}``: ``{"result": ["repo:tag", ...]}``; ``/list/`` lists every tag.
* ``PUT /referrers/{repo}/{subject}/{d}``, ``GET /referrers/{repo}/{subject}``: see
  :mod:`kraken.buildindex.referrer_routes`.

aiohttp decodes ``%2F`` in the path before routing, so the routes use ``.+`` patterns that
accept the repository's slashes whether or not the client encoded them.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from kraken.backend import BackendError, BackendRouter, ReadOnlyBackend, build_router
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.referrer_routes import add_referrer_routes
from kraken.buildindex.tags import TagError, parse_tag, validate_repo
from kraken.buildindex.tagstore import TagStore
from kraken.core.digest import Digest, DigestError
from kraken.http.app import create_app
from kraken.http.client import HTTPStatusError, create_client
from kraken.http.errors import ErrorTable, JsonError
from kraken.http.healthcheck import RingMetrics
from kraken.http.server import Site, site
from kraken.http.tls import ClientAuth
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import BlobNotFound, BlobNotReady, OriginCluster
from kraken.registry.references import InvalidManifest, find_missing

COMPONENT = "build-index"

log = get_logger(COMPONENT)


#: build-index's exceptions -> HTTP status. Its only outgoing calls go to backends
#: (BackendError) and to origins (HTTP client errors): both mean "retry" (503); anything else
#: still surfaces as a 500.
_ORIGINS_UNAVAILABLE = (503, "origins unavailable: {error}")
ERRORS: ErrorTable = {
    TagError: 400,
    BackendError: (503, "storage backend unavailable: {error}"),
    ReadOnlyBackend: (405, "{error}"),
    aiohttp.ClientError: _ORIGINS_UNAVAILABLE,
    TimeoutError: _ORIGINS_UNAVAILABLE,
    ConnectionError: _ORIGINS_UNAVAILABLE,
    HTTPStatusError: _ORIGINS_UNAVAILABLE,
    BlobNotReady: _ORIGINS_UNAVAILABLE,
}


def _query_int(request: web.Request, name: str, minimum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise JsonError(400, f"{name} must be an integer >= {minimum}, got {raw!r}")
    return value


class _OriginSource:
    """One namespace on the origins, as the source reference checks read."""

    def __init__(self, origins: OriginCluster, namespace: str) -> None:
        self._origins = origins
        self._namespace = namespace

    async def stat(self, digest: Digest) -> int | None:
        return await self._origins.stat(self._namespace, digest)

    async def read(self, digest: Digest, max_size: int) -> bytes | None:
        try:
            return await self._origins.read_bytes(self._namespace, digest)
        except BlobNotFound:
            return None


@dataclass
class _Running:
    """What exists only while build-index runs (opened in :meth:`BuildIndex.lifecycle`)."""

    router: BackendRouter
    store: TagStore
    origins: OriginCluster


class BuildIndex:
    """Request handlers plus the dependencies they share: made from the config when the app is
    built (no I/O); :meth:`lifecycle`, the app's cleanup context, opens the backends and the
    client (they need a running loop) and closes them."""

    def __init__(self, config: BuildIndexConfig, metrics: Metrics) -> None:
        self.config = config
        self.puts = metrics.counter(
            "kraken_buildindex_tag_puts_total", "Tag PUTs by result", ["result"]
        )
        self.gets = metrics.counter(
            "kraken_buildindex_tag_gets_total",
            "Tag lookups by result (backend, cache, fallback = backend down, not_found)",
            ["result"],
        )
        self.ring_metrics = RingMetrics(metrics)
        self._running: _Running | None = None

    @property
    def running(self) -> _Running:
        if self._running is None:
            raise RuntimeError("build-index not started")
        return self._running

    @property
    def store(self) -> TagStore:
        return self.running.store

    @property
    def router(self) -> BackendRouter:
        return self.running.router

    @property
    def origins(self) -> OriginCluster:
        return self.running.origins

    async def lifecycle(self, _: web.Application) -> AsyncIterator[None]:
        """Each close is registered as soon as its resource exists, so a failed start closes
        what already started; closed in reverse order at shutdown."""
        config = self.config
        async with AsyncExitStack() as stack:
            router = await build_router(config.backends, config.auth, config.http_client, config.tls)
            stack.push_async_callback(router.close)
            http = create_client(config.http_client, config.tls)
            stack.push_async_callback(http.close)
            origins = OriginCluster(config.origins, http, metrics=self.ring_metrics)
            origins.start()
            stack.push_async_callback(origins.close)
            self._running = _Running(router, TagStore(Path(config.store.root), router, config.cache_ttl), origins)
            stack.callback(setattr, self, "_running", None)
            log.info("build-index started", origins=",".join(config.origins.hosts),
                     backends=len(router.backends), cache_ttl=config.cache_ttl)
            yield

    async def readiness(self) -> None:
        """Ready when every backend answers its probe in time (tags are written through to all
        of them, so none is optional here)."""
        await self.router.check_ready(every=True)

    async def put_tag(self, request: web.Request) -> web.Response:
        try:
            tag = parse_tag(request.match_info["tag"])
            digest = Digest.parse(request.match_info["digest"])
        except (TagError, DigestError) as e:
            self.puts.labels("invalid").inc()
            raise JsonError(400, str(e)) from None
        try:
            missing = await find_missing(
                _OriginSource(self.origins, tag.repo), digest, max_manifest_size=self.config.max_manifest_size,
                max_references=self.config.max_manifest_references, concurrency=self.config.verify_concurrency,
            )
        except InvalidManifest as e:
            self.puts.labels("invalid").inc()
            raise JsonError(400, str(e), missing=[]) from None
        if missing is not None:
            self.puts.labels("missing").inc()
            log.warning("tag refused: reference missing from origins", tag=tag, digest=digest, missing=missing)
            raise JsonError(
                400, f"manifest {digest} references content missing from the origins", missing=[str(missing)],
            )
        await self.store.put(tag, digest)
        self.puts.labels("ok").inc()
        return web.Response(status=200)

    async def get_tag(self, request: web.Request) -> web.Response:
        tag = parse_tag(request.match_info["tag"])
        lookup = await self.store.get(tag)
        if lookup.digest is None:
            self.gets.labels("not_found").inc()
            raise JsonError(404, f"tag {tag} not found")
        self.gets.labels(lookup.source).inc()
        return web.Response(text=str(lookup.digest), content_type="text/plain")

    async def list_repository(self, request: web.Request) -> web.Response:
        repo = request.match_info["repo"]
        validate_repo(repo)
        limit = _query_int(request, "limit", 1)
        offset = _query_int(request, "offset", 0) or 0
        prefix = f"{repo}:"
        names = sorted(name[len(prefix):] for name in await self.store.list(prefix))
        end = None if limit is None else offset + limit
        return web.json_response({"result": names[offset:end]})

    async def list_prefix(self, request: web.Request) -> web.Response:
        return web.json_response({"result": await self.store.list(request.match_info["prefix"])})


def create_buildindex_app(config: BuildIndexConfig) -> web.Application:
    metrics = Metrics(COMPONENT)
    server = BuildIndex(config, metrics)
    app = create_app(COMPONENT, metrics, readiness=server.readiness, errors=ERRORS)
    app.cleanup_ctx.append(server.lifecycle)
    app.router.add_put(r"/tags/{tag:.+}/digest/{digest}", server.put_tag)
    app.router.add_get(r"/tags/{tag:.+}", server.get_tag)
    app.router.add_get(r"/repositories/{repo:.+}/tags", server.list_repository)
    app.router.add_get(r"/list/{prefix:.*}", server.list_prefix)
    add_referrer_routes(app, server, metrics)
    return app


def sites(config: BuildIndexConfig) -> list[Site]:
    return [site(create_buildindex_app(config), config.listen, config.tls, ClientAuth.REQUIRED)]
