"""URLs, built in one place: the only module in ``kraken/`` that writes a scheme.

Components name each other by ``host:port``; :class:`~kraken.http.client.HttpClient` turns
that into a URL with :func:`base_url` in its own scheme (``secure``), so turning TLS on (the
``tls:`` section) changes every client at once instead of every call site. The devcluster,
which is no Kraken client, calls :func:`service_url` directly.

The Docker Engine API is not a Kraken service: it is reached over its unix socket in plain
HTTP whatever Kraken's ``tls:`` says, through :func:`docker_api_url`.
"""
from __future__ import annotations

#: Base URL of the Docker Engine API on a unix socket (aiohttp's ``UnixConnector`` dials
#: the socket; the host part only fills the ``Host`` header, which the daemon ignores).
DOCKER_API = "http://docker"


def base_url(addr: str, *, secure: bool = False) -> str:
    """``scheme://host:port`` for ``addr``; an ``addr`` that already names a scheme is kept."""
    if "://" in addr:
        return addr.rstrip("/")
    return f"{'https' if secure else 'http'}://{addr}"


def service_url(addr: str, path: str, *, secure: bool = False) -> str:
    """The URL of ``path`` (starting with ``/``) on the service at ``addr``."""
    return base_url(addr, secure=secure) + path


def docker_api_url(path: str) -> str:
    """The URL of ``path`` (starting with ``/``) of the Docker Engine API on its unix socket."""
    return DOCKER_API + path
