"""Authentication of registry requests (the proxy's ``auth:`` section).

The registry app asks an :class:`Authenticator` about every ``/v2`` request before serving
it, with the :class:`~kraken.registry.auth.access.Access` the request needs; the
authenticator returns the user or raises a registry error (401 with a challenge, 429). Two
implement it, in distribution's config shapes: htpasswd (Basic) and token (Bearer JWT).
"""
from __future__ import annotations

from typing import Protocol

from aiohttp import web

from kraken.registry.auth.access import Access, required_access
from kraken.registry.auth.config import AuthConfig, HtpasswdConfig, TokenConfig
from kraken.registry.auth.htpasswd import HtpasswdAuthenticator
from kraken.registry.auth.token import TokenAuthenticator

__all__ = ["Access", "AuthConfig", "Authenticator", "HtpasswdConfig", "TokenConfig", "create_authenticator",
           "required_access"]


class Authenticator(Protocol):
    async def authenticate(self, request: web.Request, access: list[Access]) -> str:
        """The authenticated user (or token subject); raises a RegistryError to refuse."""
        ...


def create_authenticator(config: AuthConfig | None) -> Authenticator | None:
    """The authenticator ``config`` describes; None (no ``auth:``): every request is served."""
    if config is None:
        return None
    if config.htpasswd is not None:
        return HtpasswdAuthenticator(config.htpasswd)
    assert config.token is not None
    return TokenAuthenticator(config.token)
