"""The agent process: one P2P session and one cache behind two HTTP apps.

- the registry (``listen``, 16000): the shared read-only registry v2 routes over
  :class:`~kraken.agent.storage.AgentStorage`;
- the agent server (``server``, 16002): ``/health``, ``/readiness`` (tracker and build-index
  answer), ``GET /tags/{repo:tag}``, ``GET /namespace/{ns}/blobs/{d}`` (cache or P2P, then
  the file, Range supported), ``DELETE /blobs/{d}``, ``/metrics``.

Both apps share one :class:`~kraken.metrics.Metrics` (the P2P session's metrics included), so
``/metrics`` on either port shows everything. :meth:`Agent.start` is async because the P2P
session starts listening there, which is why this module builds the apps from a started
:class:`Agent` rather than from the config alone.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from kraken.agent.blobs import AgentBlobs, BlobUnavailable
from kraken.agent.cleanup import CacheCleanup
from kraken.agent.config import AgentConfig
from kraken.agent.fallback import HttpFallback
from kraken.agent.preload import RUNTIMES, Preloader, PreloadError
from kraken.agent.storage import AgentStorage
from kraken.agent.tracker import TrackerClient
from kraken.buildindex.client import BuildIndexClient
from kraken.buildindex.tags import TagError, parse_tag
from kraken.core.digest import Digest, DigestError
from kraken.http.app import create_app
from kraken.http.client import HttpClient, HTTPStatusError, create_client
from kraken.http.health import check
from kraken.http.names import check_namespace
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import OriginCluster
from kraken.p2p import P2PSession
from kraken.registry.app import add_registry_routes
from kraken.store.cas import QUARANTINED_HELP, CAStore
from kraken.tasks import TaskOwner

COMPONENT = "agent"
log = get_logger(COMPONENT)
# Why a blob cannot be had right now (the download, the tracker, the disk): 503, try again.
_BLOB_ERRORS = (BlobUnavailable, ConnectionError, TimeoutError, HTTPStatusError, OSError, aiohttp.ClientError)


class Agent:
    """Everything both apps share; :meth:`close` releases it (after the apps stopped serving)."""

    def __init__(self, config: AgentConfig, metrics: Metrics, http: HttpClient, session: P2PSession,
                 blobs: AgentBlobs, tracker: TrackerClient, build_index: BuildIndexClient) -> None:
        self.config = config
        self.metrics = metrics
        self.http = http
        self.session = session
        self.blobs = blobs
        self.tracker = tracker
        self.build_index = build_index
        self.cleanup = CacheCleanup(blobs, config.cleanup, metrics)
        self.preloader = Preloader(config.preload, config.preload.registry or f"localhost:{config.listen.port}")
        self._tasks = TaskOwner("agent")

    @classmethod
    async def start(cls, config: AgentConfig) -> Agent:
        metrics = Metrics(COMPONENT)
        root = Path(config.store.root)
        quarantined = metrics.counter("kraken_agent_blobs_quarantined_total", QUARANTINED_HELP)
        cas = await asyncio.to_thread(CAStore, root, False, quarantined)
        session = await P2PSession.start(config.p2p, metrics, role="agent")
        http = create_client(config.http_client)
        tracker = TrackerClient(config.tracker.addr, http, config.download.metainfo_timeout)
        fallback = None
        if config.origins.hosts and config.download.fallback_after > 0:
            fallback = HttpFallback(OriginCluster(config.origins, http), cas, config.download.fallback_after, metrics)
        blobs = await AgentBlobs.create(cas, root / "download", session, tracker, config.download.timeout, metrics,
                                        fallback)
        agent = cls(config, metrics, http, session, blobs, tracker, BuildIndexClient(config.build_index.addr, http))
        agent._tasks.spawn(agent.cleanup.run(), "cleanup")
        return agent

    async def close(self) -> None:
        await self._tasks.close()
        await self.blobs.close()
        await self.session.close()
        await self.http.close()

    async def readiness(self) -> None:
        """The tracker and build-index answer ``/health``."""
        await self.tracker.ping()
        await check(self.http, self.config.build_index.addr)

    def registry_app(self) -> web.Application:
        app = create_app(COMPONENT, self.metrics, self.readiness)
        storage = AgentStorage(self.blobs, self.build_index)
        add_registry_routes(app, storage, read_only=True, max_manifest_size=self.config.max_manifest_size)
        return app

    def server_app(self) -> web.Application:
        app = create_app(COMPONENT, self.metrics, self.readiness)
        app.middlewares.append(check_namespace)
        app.router.add_get("/tags/{tag:.+}", self._get_tag)
        app.router.add_get("/namespace/{ns:.+}/blobs/{digest}", self._get_blob, allow_head=False)
        app.router.add_head("/namespace/{ns:.+}/blobs/{digest}", self._head_blob)
        app.router.add_delete("/blobs/{digest}", self._delete_blob)
        app.router.add_get("/preload/tags/{tag:.+}", self._preload)
        return app

    async def _get_tag(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        try:
            parse_tag(tag)
        except TagError as e:
            return web.Response(status=400, text=f"{e}\n")
        try:
            digest = await self.build_index.get_tag(tag)
        except HTTPStatusError as e:
            if e.status < 500:
                return web.Response(status=e.status, text=f"build-index: {e.body}\n")
            return _unavailable("build-index", e)
        except (ConnectionError, TimeoutError, OSError, aiohttp.ClientError, DigestError) as e:
            return _unavailable("build-index", e)
        if digest is None:
            return web.Response(status=404, text=f"tag {tag} not found\n")
        return web.Response(text=str(digest))

    async def _head_blob(self, request: web.Request) -> web.Response:
        """The size, from the cache or the metainfo: a HEAD downloads nothing."""
        digest = _digest(request)
        try:
            size = await self.blobs.size(request.match_info["ns"], digest)
        except _BLOB_ERRORS as e:
            return _unavailable("blob", e)
        if size is None:
            return web.Response(status=404)
        return web.Response(headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})

    async def _get_blob(self, request: web.Request) -> web.StreamResponse:
        digest = _digest(request)
        try:
            path = await self.blobs.fetch(request.match_info["ns"], digest)
        except _BLOB_ERRORS as e:
            return _unavailable("blob", e)
        if path is None:
            return web.Response(status=404, text=f"blob {digest} not found\n")
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    async def _preload(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        runtime = request.query.get("runtime", "docker")
        if runtime not in RUNTIMES:
            return web.Response(status=400, text=f"runtime must be one of {', '.join(RUNTIMES)}\n")
        if ":" not in tag.rsplit("/", 1)[-1]:
            return web.Response(status=400, text="tag must be repo:tag\n")
        try:
            ref = await self.preloader.pull(tag, runtime)
        except PreloadError as e:
            log.warning("preload failed", tag=tag, runtime=runtime, error=str(e))
            return web.Response(status=e.status, text=f"{e}\n")
        return web.Response(text=f"{runtime} pulled {ref}\n")

    async def _delete_blob(self, request: web.Request) -> web.Response:
        if await self.blobs.delete(_digest(request)):
            return web.Response(status=204)
        return web.Response(status=404, text="blob not cached\n")


def _digest(request: web.Request) -> Digest:
    try:
        return Digest.parse(request.match_info["digest"])
    except DigestError as e:
        raise web.HTTPBadRequest(text=f"{e}\n") from None


def _unavailable(what: str, error: Exception) -> web.Response:
    return web.Response(status=503, text=f"{what} unavailable: {error}\n")
