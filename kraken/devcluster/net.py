"""Ports and probes: is a port free, pick a free one, does a process answer.

Standard library only: ``make devcluster-stop`` and the images' health checks import this
without the project's dependencies.
"""
from __future__ import annotations

import collections
import random
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kraken.http.urls import service_url

#: Where :func:`free_port` looks: above the dev ports (14000-17002), below the kernel's
#: ephemeral range.
_TEST_PORTS_FROM = 20000

#: Ports :func:`free_port` handed out lately: nothing listens on them yet, so only this
#: memory keeps two calls in a row (one process's several servers) from getting the same one.
_RECENTLY_GIVEN: collections.deque[int] = collections.deque(maxlen=1024)

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _ephemeral_ports_from() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # IANA's range, macOS's default


def free_port() -> int:
    """A port nothing listens on now, for a process started in a moment.

    Chosen below the kernel's ephemeral range: a port from that range can become the source
    port of any outgoing connection as soon as its server stops, and then restarting that
    server on its port fails. Never the same port twice within :data:`_RECENTLY_GIVEN`'s span,
    so a caller wanting several ports gets distinct ones.
    """
    top = _ephemeral_ports_from()
    while True:
        port = _kernel_port() if top - _TEST_PORTS_FROM < 1000 else random.randrange(_TEST_PORTS_FROM, top)
        if port not in _RECENTLY_GIVEN and port_free(port) and port_free(port, "127.0.0.1"):
            _RECENTLY_GIVEN.append(port)
            return port


def _kernel_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    """True if a server could listen on ``host:port`` now.

    Binds the way the components do (``SO_REUSEADDR``, as aiohttp's ``reuse_address``), so
    connections left in TIME_WAIT by an earlier run don't count as "in use", but any listener
    on the port (on 0.0.0.0, 127.0.0.1 or dual-stack ::) does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def local_address(bind_address: str) -> str:
    """Where a server listening on ``bind_address`` answers this host: loopback when it
    listens on every interface (or nothing was said), else that address."""
    return "127.0.0.1" if bind_address in ("", "0.0.0.0", "::") else bind_address


def redis_ok(port: int, timeout: float = 1.0) -> bool:
    """A redis-server on 127.0.0.1:``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_probe(port: int) -> str:
    """The probe of a redis-server (:func:`probe_ok`), as the state file records it."""
    return f"redis://127.0.0.1:{port}"


@dataclass(frozen=True)
class ProbeTLS:
    """How to probe a process that serves HTTPS: the cluster CA, and the client certificate
    and key to present (processes requiring one leave ``/health`` open, so they are optional)."""

    ca: str
    cert: str = ""
    key: str = ""

    def context(self) -> ssl.SSLContext:
        """Verifies the chain against ``ca`` only. Not the host name: the probe dials loopback,
        which names the certificate carries is the clients' concern (they check ``tls.name``)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        ctx.check_hostname = False
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key or None)
        return ctx


def probe_ok(probe: str, tls: ProbeTLS | None = None) -> bool:
    """A process's probe: an HTTP(S) URL that must answer 200, or ``redis://127.0.0.1:<port>``."""
    if probe.startswith("redis://"):
        return redis_ok(int(probe.rsplit(":", 1)[1]))
    return http_ok(probe, tls=tls)


def http_ok(url: str, timeout: float = 1.0, tls: ProbeTLS | None = None) -> bool:
    """GET ``url`` directly (never through an ``http_proxy`` from the environment): 200?"""
    opener = _NO_PROXY_OPENER
    if tls is not None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=tls.context()))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def endpoint_url(host: str, port: int, path: str, *, secure: bool = False) -> str:
    """The URL of ``path`` on a devcluster process at ``host:port`` (through kraken.http.urls,
    which decides the scheme)."""
    return service_url(f"{host}:{port}", path, secure=secure)
