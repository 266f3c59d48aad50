"""The ``auth:`` section of a registry (the proxy's), in distribution's shapes.

Operators who ran distribution write the same YAML: ``auth: {htpasswd: {realm, path}}`` or
``auth: {token: {realm, service, issuer, rootcertbundle}}``. The section may come from the
secrets file (``--secrets``) like any other key, so the htpasswd path and token settings
stay out of checked-in configs if an operator prefers.
"""
from __future__ import annotations

from dataclasses import dataclass

from kraken.config import ConfigError, Duration


@dataclass
class HtpasswdConfig:
    """Basic authentication against an htpasswd file of bcrypt entries (``htpasswd -B``).

    The file is read at start. bcrypt is slow by design, so a client address that fails
    ``max_failures`` times within ``failure_window`` is refused (429) until the window has
    passed, and a successful check is remembered for ``cache_ttl`` (keyed by a keyed hash of
    the credentials, never the password itself)."""

    realm: str
    path: str
    max_failures: int = 10
    failure_window: Duration = 60.0
    cache_ttl: Duration = 60.0

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ConfigError(f"max_failures must be >= 1, got {self.max_failures}")
        if self.failure_window <= 0:
            raise ConfigError(f"failure_window must be > 0, got {self.failure_window}")
        if self.cache_ttl < 0:
            raise ConfigError(f"cache_ttl must be >= 0, got {self.cache_ttl}")


@dataclass
class TokenConfig:
    """Docker token authentication: clients fetch a JWT from ``realm`` (a token server) for
    ``service`` and present it as ``Bearer``; it must be signed by a key whose certificate is
    in ``rootcertbundle`` (PEM, or chain to one) and issued by ``issuer``."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: str


@dataclass
class AuthConfig:
    """Exactly one of ``htpasswd`` or ``token``; no ``auth:`` section: no authentication."""

    htpasswd: HtpasswdConfig | None = None
    token: TokenConfig | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("htpasswd", "token") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"exactly one of htpasswd, token must be set, got {', '.join(given) or 'none'}")
