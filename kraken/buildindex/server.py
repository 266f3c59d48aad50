"""The build-index HTTP server.

Endpoints (tags are ``repo:tag``, percent-encoded in paths, e.g. ``test%2Fx:latest``):

* ``PUT /tags/{tag}/digest/{d}``: 200 once every reference of manifest ``d`` exists on the
  origins and the tag is in the backend (``tag_store.write_through: false``: on this node's
  disk, its write-back queued); 400 ``{"error", "missing": [...]}`` otherwise
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

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from kraken.backend import BackendError, BackendRouter, ReadOnlyBackend, build_router
from kraken.buildindex.client import BuildIndexClient
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.referrer_routes import add_referrer_routes
from kraken.buildindex.remotes import NEIGHBOUR_TIMEOUT, TagReplicator, build_remotes
from kraken.buildindex.tags import Tag, TagError, parse_tag, validate_repo
from kraken.buildindex.tagstore import TagStore
from kraken.buildindex.tagwriteback import PendingTags, TagWriteBack
from kraken.core.digest import Digest, DigestError
from kraken.http.allow import peer_address
from kraken.http.app import create_app
from kraken.http.client import HttpClient, HTTPStatusError, create_client
from kraken.http.errors import ErrorTable, JsonError
from kraken.http.healthcheck import RingMetrics
from kraken.http.peers import ClusterPeers
from kraken.http.server import Site, site
from kraken.http.tls import ClientAuth
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import BlobNotFound, BlobNotReady, OriginCluster
from kraken.persisted import PersistedQueue
from kraken.registry.references import InvalidManifest, MissingReference, reachable
from kraken.tasks import TaskOwner

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


#: The longest a neighbour's duplicate task may be deferred (several staggers of 20 minutes).
MAX_DUPLICATE_DELAY = 86400.0


def _current_digest(store: TagStore) -> Callable[[Tag], Awaitable[Digest | None]]:
    async def current(tag: Tag) -> Digest | None:
        return (await store.get(tag)).digest

    return current


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
    replicator: TagReplicator
    http: HttpClient


class BuildIndex:
    """Request handlers plus the dependencies they share: made from the config when the app is
    built (no I/O); :meth:`lifecycle`, the app's cleanup context, opens the backends and the
    client (they need a running loop) and closes them."""

    def __init__(self, config: BuildIndexConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._neighbours = ClusterPeers(config.cluster.static)
        self.puts = metrics.counter(
            "kraken_buildindex_tag_puts_total", "Tag PUTs by result", ["result"]
        )
        self.gets = metrics.counter(
            "kraken_buildindex_tag_gets_total",
            "Tag lookups by result (backend, cache, fallback = backend down, pending = not yet "
            "written back, not_found)",
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
            root = Path(config.store.root)
            origins = OriginCluster(config.origins, http, metrics=self.ring_metrics)
            origins.start()
            stack.push_async_callback(origins.close)
            owner = TaskOwner(COMPONENT)
            # Opened in write-through mode too: it drains what a write-back run left.
            queue = await PersistedQueue.open(root / "tag_writeback.db")
            stack.push_async_callback(queue.close)
            replication_queue = await PersistedQueue.open(root / "replication.db")
            stack.push_async_callback(replication_queue.close)
            stack.push_async_callback(owner.close)
            writeback = TagWriteBack(PendingTags(root), queue, config.tag_store, self.metrics)
            store = TagStore(root, router, config.cache_ttl, writeback)
            await writeback.start(owner, store.write_pending)
            replicator = TagReplicator(replication_queue, build_remotes(config.remotes), origins, http,
                                       config.tag_replication, self.metrics, _current_digest(store))
            replicator.start(owner)
            self._running = _Running(router, store, origins, replicator, http)
            stack.callback(setattr, self, "_running", None)
            log.info("build-index started", origins=",".join(config.origins.hosts),
                     backends=len(router.backends), cache_ttl=config.cache_ttl,
                     write_through=config.tag_store.write_through)
            yield

    async def readiness(self) -> None:
        """Ready when every backend answers its probe in time (tags are written through to all
        of them, so none is optional here)."""
        await self.router.check_ready(every=True)

    async def put_tag(self, request: web.Request) -> web.Response:
        """Store the tag once everything its manifest reaches is on the origins; with
        ``?replicate=true`` (the proxy's PUT), queue its copy to the matching remotes."""
        try:
            tag = parse_tag(request.match_info["tag"])
            digest = Digest.parse(request.match_info["digest"])
        except (TagError, DigestError) as e:
            self.puts.labels("invalid").inc()
            raise JsonError(400, str(e)) from None
        dependencies = await self._dependencies(tag, digest)
        await self.store.put(tag, digest)
        self.puts.labels("ok").inc()
        if request.query.get("replicate") == "true":
            await self._replicate(tag, digest, dependencies)
        return web.Response(status=200)

    async def _dependencies(self, tag: Tag, digest: Digest) -> list[Digest]:
        """Every manifest and blob ``digest`` reaches, all on the origins; 400 otherwise."""
        try:
            found = await reachable(
                _OriginSource(self.origins, tag.repo), digest, max_manifest_size=self.config.max_manifest_size,
                max_references=self.config.max_manifest_references, concurrency=self.config.verify_concurrency,
            )
        except InvalidManifest as e:
            self.puts.labels("invalid").inc()
            raise JsonError(400, str(e), missing=[]) from None
        except MissingReference as e:
            self.puts.labels("missing").inc()
            log.warning("tag refused: reference missing from origins", tag=tag, digest=digest, missing=e.digest)
            raise JsonError(
                400, f"manifest {digest} references content missing from the origins", missing=[str(e.digest)],
            ) from None
        return sorted(found, key=str)

    async def _replicate(self, tag: Tag, digest: Digest, dependencies: list[Digest]) -> None:
        """Queue the tag's replication here, then hand a delayed duplicate to each neighbour
        (kraken.buildindex.remotes); a neighbour that does not answer is logged, not fatal."""
        try:
            if not await self.running.replicator.replicate(tag, digest, dependencies):
                return
        except OverflowError as e:
            raise JsonError(503, str(e)) from None
        stagger = self.config.tagserver.duplicate_replicate_stagger
        await asyncio.gather(*(self._hand_to_neighbour(neighbour, tag, digest, (i + 1) * stagger)
                               for i, neighbour in enumerate(self.config.cluster.static)))

    async def _hand_to_neighbour(self, neighbour: str, tag: Tag, digest: Digest, delay: float) -> None:
        """One try, bounded like a probe: a dead neighbour costs this PUT at most that."""
        try:
            await BuildIndexClient(neighbour, self.running.http).duplicate_replicate(
                str(tag), digest, delay, NEIGHBOUR_TIMEOUT)
        except (aiohttp.ClientError, TimeoutError, ConnectionError, HTTPStatusError) as e:
            log.warning("duplicate replication not handed to neighbour", tag=tag, neighbour=neighbour,
                        error=f"{type(e).__name__}: {e}")

    async def replicate_tag(self, request: web.Request) -> web.Response:
        """``POST /remotes/tags/{tag}``: replicate a stored tag again (to every matching remote)."""
        tag = parse_tag(request.match_info["tag"])
        lookup = await self.store.get(tag)
        if lookup.digest is None:
            raise JsonError(404, f"tag {tag} not found")
        await self._replicate(tag, lookup.digest, await self._dependencies(tag, lookup.digest))
        return web.Response(status=200)

    async def duplicate_replicate(self, request: web.Request) -> web.Response:
        """A neighbour's task, queued here ``delay`` seconds later (kraken.buildindex.remotes).
        Only from this cluster's build-indexes (``cluster.static``), loopback, or, with TLS, a
        cluster certificate; the image's blobs are found here again, not taken from the body."""
        address = peer_address(request)
        if not request.get_extra_info("peercert") and not await self._neighbours.allows(address):
            log.warning("refused: not a neighbour build-index", peer=str(address), path=request.path)
            raise JsonError(403, f"duplicate replication is for this cluster's build-indexes; {address} is not one")
        try:
            tag = parse_tag(request.match_info["tag"])
            digest = Digest.parse(request.match_info["digest"])
            delay = float((await request.json())["delay"])
            if not 0 <= delay <= MAX_DUPLICATE_DELAY:
                raise ValueError(f"delay {delay} out of range")
        except (TagError, DigestError, ValueError, KeyError, TypeError) as e:
            raise JsonError(400, f"bad duplicate replication request: {e}") from None
        lookup = await self.store.get(tag)
        if lookup.digest != digest:
            raise JsonError(409, f"tag {tag} does not point at {digest} here")
        try:
            await self.running.replicator.replicate(tag, digest, await self._dependencies(tag, digest), delay)
        except OverflowError as e:
            raise JsonError(503, str(e)) from None
        return web.Response(status=200)

    async def origin(self, _: web.Request) -> web.Response:
        """``GET /origin``: this cluster's origins, for another cluster's replication."""
        return web.Response(text=",".join(self.config.origins.hosts), content_type="text/plain")

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
    app.router.add_post(r"/remotes/tags/{tag:.+}", server.replicate_tag)
    app.router.add_post(r"/internal/duplicate/remotes/tags/{tag:.+}/digest/{digest}", server.duplicate_replicate)
    app.router.add_get("/origin", server.origin)
    add_referrer_routes(app, server, metrics)
    return app


def sites(config: BuildIndexConfig) -> list[Site]:
    return [site(create_buildindex_app(config), config.listen, config.tls, ClientAuth.REQUIRED)]
