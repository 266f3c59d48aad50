"""URLs of Kraken's own services, built in one place.

Components name each other by ``host:port``; the scheme is decided here, so turning TLS on
(the ``tls:`` section) changes every client at once instead of every call site.
"""
from __future__ import annotations


def base_url(addr: str, *, secure: bool = False) -> str:
    """``scheme://host:port`` for ``addr``; an ``addr`` that already names a scheme is kept."""
    if "://" in addr:
        return addr.rstrip("/")
    return f"{'https' if secure else 'http'}://{addr}"


def service_url(addr: str, path: str, *, secure: bool = False) -> str:
    """The URL of ``path`` (starting with ``/``) on the service at ``addr``."""
    return base_url(addr, secure=secure) + path
