"""Pick a backend per namespace: regexes tried in config order, first full match wins.

Blobs of ``library/.*`` can live in one bucket and everything else in another; a namespace no
entry matches is a configuration gap, reported as BackendError so the caller's retry/alert
path handles it instead of a silent fallback.
"""
from __future__ import annotations

import asyncio
import re
from contextlib import AsyncExitStack
from dataclasses import dataclass

from kraken.backend.bandwidth import ThrottledBackend, throttle
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


#: How long a readiness probe of one backend may take before it counts as not ready.
READY_TIMEOUT = 5.0


@dataclass(frozen=True)
class Route:
    """One ``backends:`` entry as built: its regex, its backend and what messages name it by."""

    pattern: re.Pattern[str]
    backend: Backend
    kind: str
    must_ready: bool = False

    def describe(self) -> str:
        """``testfs backend for namespaces '.*'``: how logs and errors name this entry."""
        return f"{self.kind} backend for namespaces {self.pattern.pattern!r}"


class BackendRouter:
    """Owns one backend per config entry and closes them all."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    @property
    def backends(self) -> list[Backend]:
        """Every configured backend in config order (e.g. for readiness probes)."""
        return [route.backend for route in self.routes]

    def route(self, namespace: str) -> Route:
        for route in self.routes:
            if route.pattern.fullmatch(namespace):
                return route
        raise BackendError(f"no backend configured for namespace {namespace!r}")

    def for_namespace(self, namespace: str) -> Backend:
        return self.route(namespace).backend

    def adjust_bandwidth(self, denominator: int) -> None:
        """Divide every limited backend's configured rates by ``denominator`` (the origins
        sharing the backends), as Kraken does when its ring changes."""
        for route in self.routes:
            if isinstance(route.backend, ThrottledBackend):
                route.backend.limiter.adjust(denominator)
                log.info("backend bandwidth adjusted", namespace=route.pattern.pattern, kind=route.kind,
                         denominator=denominator,
                         egress_bits_per_sec=route.backend.limiter.egress_bits_per_sec or "unlimited",
                         ingress_bits_per_sec=route.backend.limiter.ingress_bits_per_sec or "unlimited")

    async def check_ready(self, timeout: float = READY_TIMEOUT, *, every: bool = False) -> None:
        """Raise :class:`BackendError` naming every ``must_ready`` backend (with ``every``: every
        backend) that does not answer its probe within ``timeout`` (probed concurrently, so a
        store that hangs costs a probe ``timeout``, not its own request timeouts)."""
        required = [route for route in self.routes if every or route.must_ready]
        results = await asyncio.gather(*(asyncio.wait_for(route.backend.ready(), timeout) for route in required),
                                       return_exceptions=True)
        failed = [f"{route.describe()}: {_reason(result)}"
                  for route, result in zip(required, results, strict=True) if isinstance(result, BaseException)]
        if failed:
            raise BackendError("; ".join(failed))

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
            routes.append(Route(re.compile(entry.namespace), throttle(backend, entry.bandwidth, entry.namespace),
                                entry.backend.kind, entry.must_ready))
            log.info("backend configured", namespace=entry.namespace, kind=entry.backend.kind,
                     must_ready=entry.must_ready, bandwidth_limited=entry.bandwidth.enable)
        stack.pop_all()
    return BackendRouter(routes)


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return f"{type(error).__name__}: {error}"
