"""Pick a backend per namespace: regexes tried in config order, first full match wins.

Blobs of ``library/.*`` can live in one bucket and everything else in another; a namespace no
entry matches is a configuration gap, reported as BackendError so the caller's retry/alert
path handles it instead of a silent fallback.
"""
from __future__ import annotations

import re
from contextlib import AsyncExitStack

from kraken.backend.base import Backend, BackendContext, BackendError
from kraken.backend.config import Auth, BackendConfig, NamespaceBackendConfig, kind_credentials
from kraken.backend.registry import BACKENDS
from kraken.http.config import HttpClientConfig, TLSConfig
from kraken.log import get_logger

log = get_logger("kraken.backend")

def create_backend(config: BackendConfig, auth: Auth | None = None,
                   http_client: HttpClientConfig | None = None, tls: TLSConfig | None = None) -> Backend:
    """Build the backend ``config`` describes, with its kind's credential sets from ``auth``
    and the component's ``http_client`` and ``tls`` settings (inside a running loop: it may
    open a client)."""
    context = BackendContext(credentials=kind_credentials(auth or {}, config.kind),
                             http_client=http_client or HttpClientConfig(), tls=tls or TLSConfig())
    return BACKENDS.get(config.kind).factory(config.config, context)


class BackendRouter:
    """Owns one backend per config entry and closes them all."""

    def __init__(self, routes: list[tuple[re.Pattern[str], Backend]]) -> None:
        self._routes = routes

    @property
    def backends(self) -> list[Backend]:
        """Every configured backend in config order (e.g. for readiness probes)."""
        return [backend for _, backend in self._routes]

    def for_namespace(self, namespace: str) -> Backend:
        for pattern, backend in self._routes:
            if pattern.fullmatch(namespace):
                return backend
        raise BackendError(f"no backend configured for namespace {namespace!r}")

    async def close(self) -> None:
        """Close every backend, also when closing one of them fails."""
        async with AsyncExitStack() as stack:
            for backend in self.backends:
                stack.push_async_callback(backend.close)


async def build_router(configs: list[NamespaceBackendConfig], auth: Auth | None = None,
                       http_client: HttpClientConfig | None = None, tls: TLSConfig | None = None) -> BackendRouter:
    """One backend per entry (inside a running loop); when one cannot be built, those built
    before it are closed before the error propagates."""
    routes = []
    async with AsyncExitStack() as stack:
        for entry in configs:
            backend = create_backend(entry.backend, auth, http_client, tls)
            stack.push_async_callback(backend.close)
            routes.append((re.compile(entry.namespace), backend))
            log.info("backend configured", namespace=entry.namespace, kind=entry.backend.kind)
        stack.pop_all()
    return BackendRouter(routes)
