"""The aiohttp application factory every component uses.

It gives each component the same operational surface: ``/health``, ``/metrics``, an access
log, per-route request metrics, and an error middleware. A raised exception is answered, in
this order: by itself when it knows how to render itself (``to_response()``: a registry error,
:class:`~kraken.http.errors.JsonError`); by the component's error table (``errors``, see
:mod:`kraken.http.errors`) as ``{"error"}``; else it is logged and becomes a 500, never a stack
trace to the client: the first of the app's :data:`ERROR_RENDERERS` that answers for the
request renders it (the registry installs one, so every ``/v2`` answer is registry error
JSON), else ``{"error"}``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from kraken.http.errors import ErrorTable, json_error, lookup
from kraken.log import get_logger
from kraken.metrics import Metrics

METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
COMPONENT: web.AppKey[str] = web.AppKey("component", str)

ReadinessCheck = Callable[[], Awaitable[None]]
#: An aiohttp request handler, as a middleware receives it.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Renders an unhandled exception of a request it is responsible for; None passes it on.
ErrorRenderer = Callable[[web.Request, Exception], "web.StreamResponse | None"]
ERROR_RENDERERS: web.AppKey[list[ErrorRenderer]] = web.AppKey("error_renderers", list)

access_log = get_logger("kraken.access")


def _route_label(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info is not None and info.route is not None else None
    return resource.canonical if resource is not None else "unmatched"


def create_app(
    component: str,
    metrics: Metrics | None = None,
    readiness: ReadinessCheck | None = None,
    client_max_size: int = 1 << 20,
    quiet_routes: tuple[str, ...] = (),
    errors: ErrorTable | None = None,
) -> web.Application:
    """``quiet_routes`` (route patterns such as ``/announce``) are access-logged at DEBUG:
    requests every host repeats every few seconds would drown everything else at INFO.
    ``errors`` is the component's exception -> status table (none for a registry-only app,
    whose errors are OCI JSON)."""
    table: ErrorTable = errors or {}
    metrics = metrics or Metrics(component)
    quiet = {"/health", "/metrics", *quiet_routes}
    log = get_logger(component)
    # (method, route, status) -> its metric children: prometheus_client's labels() takes a lock
    # and builds a key per call, which a tracker answering thousands of announces a second feels.
    # As many entries as the metrics themselves have children.
    observed: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence for a request
            if request.transport is None or request.transport.is_closing():
                # The client went away (or its connection was dropped for a timeout): no
                # response can reach it, so no stack trace either.
                status = 499
                return web.Response(status=499)
            render = getattr(e, "to_response", None)
            if render is not None:
                response = render()
                status = response.status
                return response
            known = lookup(table, e)
            if known is not None:
                status, message = known
                if status >= 500:
                    log.warning("request failed", method=request.method, path=request.path, status=status,
                                error=f"{type(e).__name__}: {e}")
                return json_error(status, message)
            log.exception("unhandled error", method=request.method, path=request.path)
            for renderer in request.app[ERROR_RENDERERS]:
                rendered = renderer(request, e)
                if rendered is not None:
                    status = rendered.status
                    return rendered
            return json_error(500, f"internal error: {type(e).__name__}: {e}")
        finally:
            elapsed = time.perf_counter() - start
            route = _route_label(request)
            key = (request.method, route, status)
            children = observed.get(key)
            if children is None:
                children = observed[key] = (metrics.http_requests.labels(request.method, route, str(status)),
                                            metrics.http_latency.labels(request.method, route))
            children[0].inc()
            children[1].observe(elapsed)
            level = logging.DEBUG if route in quiet else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(
                    level, "request", component=component, method=request.method, path=request.path_qs,
                    status=status, ms=round(elapsed * 1000, 1), remote=request.remote,
                    agent=request.headers.get("User-Agent", "-"),
                )

    app = web.Application(middlewares=[observe], client_max_size=client_max_size)
    app[METRICS] = metrics
    app[COMPONENT] = component
    app[ERROR_RENDERERS] = []

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def ready(_: web.Request) -> web.Response:
        if readiness is not None:
            try:
                await readiness()
            except Exception as e:  # noqa: BLE001 - any failing dependency means not ready
                return json_error(503, f"not ready: {e}")
        return web.Response(text="OK\n")

    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/health", health)
    app.router.add_get("/readiness", ready)
    app.router.add_get("/metrics", metrics_handler)
    return app
