"""The proxy's HTTP server: the shared registry protocol, read-write, over origins and build-index."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from kraken.http.app import create_app
from kraken.http.server import Site, site
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.proxy.config import ProxyConfig
from kraken.proxy.manifest_cache import ManifestCache
from kraken.proxy.preheat_server import preheat_site
from kraken.proxy.storage import ProxyMetrics, ProxyStorage
from kraken.registry.app import add_registry_routes
from kraken.registry.auth import create_authenticator
from kraken.registry.uploads import UploadLimits
from kraken.store.cas import CAStore

COMPONENT = "proxy"

log = get_logger(COMPONENT)

STORAGE: web.AppKey[ProxyStorage] = web.AppKey("proxy_storage", ProxyStorage)


def create_proxy_app(config: ProxyConfig) -> web.Application:
    metrics = Metrics(COMPONENT)
    manifests = ManifestCache(Path(config.store.root) / "manifests", config.manifest_cache_size)
    storage = ProxyStorage(config.origins, config.build_index, ProxyMetrics(metrics), manifests,
                           config.http_client, config.tls)
    staging = CAStore(config.store.root, durable=False)  # the origin keeps the durable copy
    app = create_app(COMPONENT, metrics, readiness=storage.readiness)
    app[STORAGE] = storage

    async def clear_staging(_: web.Application) -> AsyncIterator[None]:
        await _clear_staging(staging)
        yield

    app.cleanup_ctx.extend([clear_staging, storage.lifecycle])
    add_registry_routes(
        app, storage, read_only=False, uploads=staging,
        max_manifest_size=config.max_manifest_size, upload_ttl=config.upload_ttl,
        max_manifest_references=config.max_manifest_references,
        upload_limits=UploadLimits(config.max_uploads_per_client, config.max_uploads),
        auth=create_authenticator(config.auth),
    )
    log.info("proxy configured", origins=",".join(config.origins.hosts), build_index=config.build_index.describe(),
             store=config.store.root)
    return app


def sites(config: ProxyConfig) -> list[Site]:
    """The registry API (its errors are OCI error JSON, so its app has no error table of its
    own: :mod:`kraken.registry.errors`) and, with a ``server:`` section, the second server
    (kraken.proxy.preheat_server), which shares its clients and metrics."""
    app = create_proxy_app(config)
    served = [site(app, config.listen, config.tls)]
    if config.server is not None:
        served.append(preheat_site(config, config.server, app[STORAGE], app))
    return served


async def _clear_staging(staging: CAStore) -> None:
    """Start with an empty staging store. Upload sessions live in memory, so files in the
    upload dir belong to a previous run; a crash between verifying a blob and handing it to
    its origin leaves it in the cache, where nothing reads it again."""

    def clear() -> int:
        removed = sum(staging.delete(d) for d in list(staging.digests()))
        for path in list(staging.upload_dir.iterdir()):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    removed = await asyncio.to_thread(clear)
    if removed:
        log.info("cleared staging files left by a previous run", count=removed)
