"""Serving aiohttp applications with bounded connections: the one way every component listens.

aiohttp closes idle keep-alive connections (``keepalive_timeout``) but has no header, body
or write timeout and no connection limit, so a client that sends half a request line, a body
shorter than its ``Content-Length``, or never reads its response pins a descriptor and the
response's buffers forever. Each listening server here is an aiohttp ``Server`` whose
connections are watched (``http:`` section, :class:`~kraken.http.config.HttpServerConfig`):

- a connection without a complete request head ``header_timeout`` after it opened (or after
  the first byte of a later request) is dropped;
- a request whose body is incomplete and got no byte for ``body_timeout`` while the server
  was reading it (not paused by flow control: a handler busy upstream never times out a
  client) is dropped;
- a connection with unsent bytes (aiohttp's buffer, or the kernel's send queue: ``sendfile``
  bypasses aiohttp) that the peer acknowledged none of for ``write_timeout`` is dropped;
- idle keep-alive connections close after ``idle_timeout`` (aiohttp's own timer);
- beyond ``max_connections`` open connections, a new one is closed at once (lowered at
  start to what the open-files limit holds, so a flood never makes ``accept`` fail).

A dropped connection's socket is shut down, which fails whatever is still reading or writing
it (a ``sendfile`` included) and lets aiohttp release it; the transport is aborted shortly
after if it is still open. Metrics: ``kraken_http_connections_open``,
``kraken_http_connections_refused_total`` and ``kraken_http_connections_dropped_total``
(by ``reason``), labelled by the server's ``port``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import resource
import signal
import socket
import ssl
import struct
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from kraken.config import ListenConfig
from kraken.http.app import COMPONENT, METRICS
from kraken.http.config import HttpServerConfig, TLSConfig
from kraken.http.tls import ClientAuth, checks_clients, client_cert_guard, server_context
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.tasks import TaskOwner

if sys.platform == "linux":
    import fcntl
    import termios

#: One listening app: ``(app, host, port, ssl context or None for plain HTTP)``. Each
#: component's ``server.py`` has ``sites(config) -> list[Site]``, which its ``__main__`` hands
#: to :func:`serve`.
Site = tuple[web.Application, str, int, ssl.SSLContext | None]

HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"
WRITE_TIMEOUT = "write_timeout"
#: Descriptors always left for what is not a client connection (files, upstreams, P2P).
MIN_SPARE_FDS = 64
#: After a dropped connection's socket is shut down, how long its transport may take to close.
ABORT_GRACE = 1.0
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64, follows the fixed 120-byte head.
_TCP_INFO_LEN = 128
_BYTES_ACKED_OFFSET = 120

log = get_logger("kraken.http")


def _write_progress(transport: asyncio.Transport) -> tuple[int, int] | None:
    """``(bytes the peer acknowledged, bytes aiohttp still buffers)``, which change as long as
    the peer reads; ``None`` when nothing waits to be sent. Without Linux's TCP counters only
    aiohttp's buffer is seen (a stalled ``sendfile`` then goes unnoticed)."""
    buffered = transport.get_write_buffer_size()
    unsent, acked = 0, 0
    sock = transport.get_extra_info("socket")
    if sock is not None and sys.platform == "linux":
        try:
            unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
            if len(info) >= _TCP_INFO_LEN:
                acked = struct.unpack_from("Q", info, _BYTES_ACKED_OFFSET)[0]
        except OSError:
            pass
    if buffered == 0 and unsent == 0:
        return None
    return acked, buffered


class _GuardedHandler(RequestHandler):
    """aiohttp's connection protocol plus the clocks the watchdog reads."""

    __slots__ = ("_head_since", "_last_read", "_progress", "_progress_at")

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        now = self._loop.time()
        self._head_since: float | None = now  # waiting for a request head since
        self._last_read = now
        self._progress: tuple[int, int] | None = None
        self._progress_at = now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, GuardedServer) and manager.full():
            # Before aiohttp registers the connection or starts its task: nothing to undo.
            manager.refused()
            self._manager = None
            transport.close()
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        self._last_read = now
        if self._head_since is None and not self._request_in_progress and not self._messages:
            self._head_since = now
        super().data_received(data)
        if self._messages:
            self._head_since = None

    async def _handle_request(self, request: Any, start_time: Any, request_handler: Any) -> Any:
        self._head_since = None
        return await super()._handle_request(request, start_time, request_handler)

    def overdue(self, now: float, limits: HttpServerConfig) -> str | None:
        """Which timeout this connection has exceeded, if any."""
        transport = self.transport
        if transport is None:
            return None
        if (self._head_since is not None and not self._request_in_progress
                and now - self._head_since > limits.header_timeout):
            return HEADER_TIMEOUT
        request = self._current_request
        if (request is not None and not request.content.is_eof() and not self._reading_paused
                and now - self._last_read > limits.body_timeout):
            return BODY_TIMEOUT
        progress = _write_progress(transport)
        if progress is None or progress != self._progress:
            self._progress, self._progress_at = progress, now
            return None
        return WRITE_TIMEOUT if now - self._progress_at > limits.write_timeout else None


class GuardedServer(web.Server):
    """aiohttp's low-level server with a connection limit and a watchdog (:meth:`watch`)."""

    def __init__(self, *args: Any, limits: HttpServerConfig, metrics: Metrics, port: str, **kwargs: Any) -> None:
        super().__init__(*args, keepalive_timeout=limits.idle_timeout, **kwargs)
        self.limits = limits
        self._refused = metrics.http_connections_refused.labels(port)
        self._dropped = metrics.http_connections_dropped
        self._port = port
        metrics.http_connections_open.labels(port).set_function(lambda: len(self._connections))

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)

    def full(self) -> bool:
        return len(self._connections) >= self.limits.max_connections

    def refused(self) -> None:
        self._refused.inc()

    async def watch(self) -> None:
        """Drop overdue connections, checking a few times per shortest timeout."""
        limits = self.limits
        period = min(max(min(limits.header_timeout, limits.body_timeout, limits.write_timeout) / 4, 0.05), 1.0)
        while True:
            await asyncio.sleep(period)
            now = self._loop.time()
            for handler in list(self._connections):
                reason = handler.overdue(now, limits) if isinstance(handler, _GuardedHandler) else None
                if reason is not None:
                    self._drop(handler, reason)

    def _drop(self, handler: RequestHandler, reason: str) -> None:
        transport = handler.transport
        if transport is None:
            return
        self._dropped.labels(self._port, reason).inc()
        log.info("connection dropped", reason=reason, port=self._port, peer=handler.peername)
        sock = transport.get_extra_info("socket")
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._loop.call_later(ABORT_GRACE, transport.abort)


class _GuardedRunner(web.AppRunner):
    """An AppRunner whose server is a :class:`GuardedServer` (same handler and arguments)."""

    def __init__(self, app: web.Application, limits: HttpServerConfig, port: int) -> None:
        super().__init__(app, access_log=None, handle_signals=False)
        self._limits = limits
        self._port = port

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler, request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation, loop=plain._loop,
            limits=self._limits, metrics=self.app[METRICS], port=str(self._port), **plain._kwargs,
        )


def site(app: web.Application, listen: ListenConfig, tls: TLSConfig | None = None,
         clients: ClientAuth = ClientAuth.NONE, open_routes: tuple[str, ...] = ()) -> Site:
    """``app`` on a ``listen: {host, port}`` section, over HTTPS when ``tls.server`` has a
    certificate. With ``clients`` REQUIRED and ``tls.cas``, every route but ``open_routes``
    (see :func:`~kraken.http.tls.client_cert_guard`) needs a client certificate."""
    if tls is None:
        return app, listen.host, listen.port, None
    if checks_clients(tls, clients):
        app.middlewares.append(client_cert_guard(app[COMPONENT], open_routes))
    return app, listen.host, listen.port, server_context(tls, clients)


async def serve(sites: Sequence[Site], component: str, limits: HttpServerConfig) -> None:
    """Run every ``(app, host, port, ssl)`` until SIGINT/SIGTERM, then clean them all up (their
    cleanup hooks run). If one cannot listen, the ones already started are cleaned up too.

    Sites start in order and are cleaned up in reverse, so a service the first app's cleanup
    context starts (the agent's) runs before any port listens and stops after all stopped."""
    component_log = get_logger(component)
    runners: list[_GuardedRunner] = []
    watchdogs = TaskOwner(f"{component}-http")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    limits = _fit_descriptor_limit(component_log, limits, len(sites))
    try:
        for app, host, port, ssl_context in sites:
            runner = _GuardedRunner(app, limits, port)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context).start()
            assert isinstance(runner.server, GuardedServer)
            watchdogs.spawn(runner.server.watch(), f"watchdog-{port}")
            component_log.info("listening", host=host, port=port, tls=ssl_context is not None,
                               max_connections=limits.max_connections)
        await stop.wait()
        component_log.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await watchdogs.close()
        for runner in reversed(runners):
            await runner.cleanup()


def _fit_descriptor_limit(component_log: Any, limits: HttpServerConfig, servers: int) -> HttpServerConfig:
    """``limits`` with ``max_connections`` the open-files limit can hold. Connections beyond
    that limit fail in ``accept`` and starve every client, so first the soft limit is raised
    towards the hard one (as Go's runtime does), then what is still missing is taken off
    ``max_connections``, keeping a quarter of the descriptors (at least
    :data:`MIN_SPARE_FDS`) for files, upstream connections and P2P sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections * servers + MIN_SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY:
        return limits
    fits = max(1, (soft - max(MIN_SPARE_FDS, soft // 4)) // servers)
    if fits >= limits.max_connections:
        return limits
    component_log.warning("open-files limit too low for http.max_connections; lowered",
                          max_connections=limits.max_connections, lowered_to=fits, servers=servers, nofile=soft)
    return dataclasses.replace(limits, max_connections=fits)
