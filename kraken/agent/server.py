"""The agent process: one P2P session and one cache behind two HTTP apps.

- the registry (``listen``, 16000): the shared read-only registry v2 routes over
  :class:`~kraken.agent.storage.AgentStorage`;
- the agent server (``server``, 16002): ``/health``, ``/readiness`` (tracker and build-index
  answer), ``GET /tags/{repo:tag}``, ``GET /namespace/{ns}/blobs/{d}`` (the cached file, Range
  supported; a cold blob is streamed while it downloads, :mod:`kraken.agent.streaming`),
  ``DELETE /blobs/{d}``, ``POST /preload/tags/{repo:tag}``,
  ``/metrics``.

Both ports answer only callers in ``allowed_cidrs`` (:mod:`kraken.http.allow`; 403 ``DENIED``
on the registry, ``{"error"}`` on the server).

Both apps share one :class:`Agent` and one :class:`~kraken.metrics.Metrics` (the P2P
session's metrics included), so ``/metrics`` on either port shows everything. The agent is
made from the config; the registry app's cleanup context starts it (the P2P session starts
listening there) and closes it: :func:`~kraken.http.server.serve` starts the sites in order
and cleans them up in reverse, so the agent runs before either port listens and stops after
both stopped serving.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from kraken.agent.blobs import AgentBlobs, BlobUnavailable
from kraken.agent.cleanup import CacheCleanup
from kraken.agent.config import AgentConfig
from kraken.agent.fallback import HttpFallback
from kraken.agent.preload import RETRY_AFTER, RUNTIMES, PreloadBusy, Preloader, PreloadError
from kraken.agent.storage import AgentStorage
from kraken.agent.streaming import LiveBlob
from kraken.agent.tracker import TrackerClient
from kraken.buildindex.client import BuildIndexClient, failover_counter
from kraken.buildindex.tags import TagError, parse_tag
from kraken.core.digest import Digest, DigestError
from kraken.http.allow import AllowList, guard
from kraken.http.app import create_app
from kraken.http.client import HttpClient, HTTPStatusError, create_client
from kraken.http.errors import ErrorTable, JsonError, json_error
from kraken.http.files import FileResponse
from kraken.http.healthcheck import RingMetrics
from kraken.http.names import check_namespace
from kraken.http.server import Site, site
from kraken.http.tls import ClientAuth
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import OriginCluster
from kraken.p2p import P2PError, P2PSession
from kraken.p2p.announcerelay import announce_url
from kraken.p2p.trackers import TrackerList
from kraken.registry.app import add_registry_routes
from kraken.registry.errors import RegistryError
from kraken.store.cas import QUARANTINED_HELP, CAStore
from kraken.tasks import TaskOwner

COMPONENT = "agent"
log = get_logger(COMPONENT)
#: The agent server's routes open without a client certificate when its ``tls:`` section has
#: ``cas`` and a server pair: the probes and the scrape. Tags, blobs, ``DELETE`` and preload
#: are for cluster hosts only (mTLS); the registry port never asks (Docker has no certificate).
SERVER_OPEN_ROUTES = ("/readiness", "/metrics")
# Why a blob cannot be had right now (the download, the tracker, the disk): 503, try again.
_BLOB_ERRORS = (BlobUnavailable, ConnectionError, TimeoutError, HTTPStatusError, OSError, aiohttp.ClientError)

#: The agent server's exceptions -> HTTP status (the registry app answers OCI errors). The
#: dependency failures behind a tag or a blob are answered by their handlers, which name them.
ERRORS: ErrorTable = {
    DigestError: 400,
    TagError: 400,
}


@dataclass
class _Running:
    """What exists only while the agent runs (each needs a running loop)."""

    http: HttpClient
    session: P2PSession
    blobs: AgentBlobs
    tracker: TrackerClient
    build_index: BuildIndexClient


class Agent:
    """Everything both apps share: made from the config, started and closed by
    :meth:`lifecycle` (the registry app's cleanup context)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = Metrics(COMPONENT)
        self.preloader = Preloader(config.preload, config.preload.registry or f"localhost:{config.listen.port}")
        self.allow = AllowList(config.allowed_cidrs, self.metrics)
        self._running: _Running | None = None

    @property
    def running(self) -> _Running:
        if self._running is None:
            raise RuntimeError("agent not started")
        return self._running

    @property
    def blobs(self) -> AgentBlobs:
        return self.running.blobs

    @property
    def build_index(self) -> BuildIndexClient:
        return self.running.build_index

    async def lifecycle(self, _: web.Application) -> AsyncIterator[None]:
        """Start the cache, the P2P session and the clients; close them in reverse order,
        also when a later one fails to start."""
        config, metrics = self.config, self.metrics
        root = Path(config.store.root)
        async with contextlib.AsyncExitStack() as stack:
            quarantined = metrics.counter("kraken_agent_blobs_quarantined_total", QUARANTINED_HELP)
            cas = await asyncio.to_thread(CAStore, root, False, quarantined)
            http = create_client(config.http_client, config.tls)
            stack.push_async_callback(http.close)
            trackers = TrackerList(config.tracker, metrics)
            await trackers.start()
            # Before the session, so the relay (HTTPS or several trackers) outlives its stopped announces.
            announce = await announce_url(stack, trackers, http, config.http_client, config.tls,
                                          config.p2p.listen.host, metrics)
            session = await P2PSession.start(config.p2p, metrics, role="agent")
            stack.push_async_callback(session.close)
            tracker = TrackerClient(trackers, http, config.download.metainfo_timeout, announce)
            fallback = None
            if config.origins.hosts:
                origins = OriginCluster(config.origins, http, metrics=RingMetrics(metrics))
                origins.start()
                stack.push_async_callback(origins.close)
                fallback = HttpFallback(origins, cas, config.download.fallback_after, metrics)
            blobs = await AgentBlobs.create(cas, root / "download", session, tracker, config.download.timeout,
                                            metrics, fallback, config.download.small_blob_max)
            stack.push_async_callback(blobs.close)
            tasks = TaskOwner("agent")
            stack.push_async_callback(tasks.close)
            tasks.spawn(CacheCleanup(blobs, config.cleanup, metrics).run(), "cleanup")
            self._running = _Running(http, session, blobs, tracker, BuildIndexClient(
                config.build_index, http, failover_counter(metrics)))
            stack.callback(setattr, self, "_running", None)
            yield

    async def readiness(self) -> None:
        """The tracker and build-index answer ``/health``."""
        running = self.running
        await running.tracker.ping()
        await running.build_index.ping()

    def registry_app(self) -> web.Application:
        """The registry app; its cleanup context runs the agent (see the module docstring)."""
        app = create_app(COMPONENT, self.metrics, self.readiness)
        app.cleanup_ctx.append(self.lifecycle)
        guard(app, self.allow, _registry_denied)
        add_registry_routes(app, AgentStorage(self), read_only=True, max_manifest_size=self.config.max_manifest_size)
        return app

    def server_app(self) -> web.Application:
        app = create_app(COMPONENT, self.metrics, self.readiness, errors=ERRORS)
        guard(app, self.allow, _server_denied)
        app.middlewares.append(check_namespace)
        app.router.add_get("/tags/{tag:.+}", self._get_tag)
        app.router.add_get("/namespace/{ns:.+}/blobs/{digest}", self._get_blob, allow_head=False)
        app.router.add_head("/namespace/{ns:.+}/blobs/{digest}", self._head_blob)
        app.router.add_delete("/blobs/{digest}", self._delete_blob)
        app.router.add_post("/preload/tags/{tag:.+}", self._preload)
        app.router.add_get("/preload/tags/{tag:.+}", _preload_needs_post)
        return app

    async def _get_tag(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        parse_tag(tag)
        try:
            digest = await self.build_index.get_tag(tag)
        except HTTPStatusError as e:
            if e.status < 500:
                return json_error(e.status, f"build-index: {e.message}")
            return _unavailable("build-index", e)
        except (ConnectionError, TimeoutError, OSError, aiohttp.ClientError, DigestError) as e:
            return _unavailable("build-index", e)
        if digest is None:
            return json_error(404, f"tag {tag} not found")
        return web.Response(text=str(digest))

    async def _head_blob(self, request: web.Request) -> web.Response:
        """The size, from the cache or the metainfo: a HEAD downloads nothing."""
        digest = Digest.parse(request.match_info["digest"])
        try:
            size = await self.blobs.size(request.match_info["ns"], digest)
        except _BLOB_ERRORS as e:
            return _unavailable("blob", e)
        if size is None:
            return web.Response(status=404)  # a HEAD answer has no body
        return web.Response(headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})

    async def _get_blob(self, request: web.Request) -> web.StreamResponse:
        """The cached file (ranges included); a whole cold blob streams while it downloads."""
        digest = Digest.parse(request.match_info["digest"])
        namespace = request.match_info["ns"]
        try:
            if "Range" in request.headers:  # a range is served from the verified file only
                blob: Path | LiveBlob | None = await self.blobs.fetch(namespace, digest)
            else:
                blob = await self.blobs.open(namespace, digest)
        except _BLOB_ERRORS as e:
            return _unavailable("blob", e)
        if blob is None:
            return json_error(404, f"blob {digest} not found")
        if isinstance(blob, LiveBlob):
            return await _stream_live(request, blob)
        return FileResponse(blob, headers={"Content-Type": "application/octet-stream"})

    async def _preload(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        runtime = request.query.get("runtime", "docker")
        if runtime not in RUNTIMES:
            return json_error(400, f"runtime must be one of {', '.join(RUNTIMES)}")
        if ":" not in tag.rsplit("/", 1)[-1]:
            return json_error(400, "tag must be repo:tag")
        try:
            ref = await self.preloader.pull(tag, runtime)
        except PreloadBusy as e:
            return json_error(e.status, str(e), headers={"Retry-After": str(RETRY_AFTER)})
        except PreloadError as e:
            log.warning("preload failed", tag=tag, runtime=runtime, error=str(e))
            return json_error(e.status, str(e))
        return web.Response(text=f"{runtime} pulled {ref}\n")

    async def _delete_blob(self, request: web.Request) -> web.Response:
        if await self.blobs.delete(Digest.parse(request.match_info["digest"])):
            return web.Response(status=204)
        return json_error(404, "blob not cached")


def sites(config: AgentConfig) -> list[Site]:
    """The registry and the agent server, over one :class:`Agent` (the registry first: its
    cleanup context starts the agent)."""
    agent = Agent(config)
    return [site(agent.registry_app(), config.listen, config.tls),
            site(agent.server_app(), config.server, config.tls, ClientAuth.REQUIRED, open_routes=SERVER_OPEN_ROUTES)]


async def _preload_needs_post(_: web.Request) -> web.Response:
    """A preload starts a pull on the host: a GET (a link, a crawler) must not."""
    return json_error(405, "preload is POST /preload/tags/<repo>:<tag>", headers={"Allow": "POST"})


def _registry_denied(address: str) -> Exception:
    return RegistryError("DENIED", detail=f"{address} is not in the agent's allowed_cidrs")


def _server_denied(address: str) -> Exception:
    return JsonError(403, f"{address} is not in the agent's allowed_cidrs")


async def _stream_live(request: web.Request, blob: LiveBlob) -> web.StreamResponse:
    """Send a blob as it downloads. Its headers are out before it is verified, so a failure
    (a sha256 mismatch, a failed download) closes the connection before the last piece: the
    client sees fewer bytes than the Content-Length, never a complete wrong blob."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = blob.size
    await response.prepare(request)
    try:
        async with contextlib.aclosing(blob.chunks()) as chunks:
            async for chunk in chunks:
                await response.write(chunk)
        await response.write_eof()
    except (*_BLOB_ERRORS, P2PError) as e:
        log.warning("blob stream aborted", digest=blob.digest, error=str(e))
        if request.transport is not None:
            request.transport.close()
    return response


def _unavailable(what: str, error: Exception) -> web.Response:
    return json_error(503, f"{what} unavailable: {error}")
