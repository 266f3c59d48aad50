"""The ``registry_blob`` / ``registry_tag`` config, in Kraken's shape::

    registry_blob:
      address: index.docker.io        # host[:port], or a URL naming the scheme
      timeout: 60s
      security:
        tls:
          client: {disabled: false}   # true: plain HTTP
          cas: [{path: /etc/ssl/upstream-ca.pem}]   # none: the system's CAs
        basic: {username: alice, password: s3cret}

The password may stay out of the config: with ``basic.username`` and no ``basic.password``,
it is read from the ``auth:`` section (the ``--secrets`` file),
``auth: {registry_blob: {alice: {password: ...}}}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kraken.config import Duration, Secret
from kraken.http.config import TLSConfig


@dataclass
class BasicAuthConfig:
    """Credentials for the upstream: sent when it asks for Basic, and to its token server."""

    username: str = ""
    password: Secret | None = None


@dataclass
class RegistrySecurityConfig:
    #: How the upstream is reached: ``tls.client.disabled`` for plain HTTP; ``tls.cas``
    #: (only those CAs are trusted, the system's otherwise), ``tls.name`` and a client
    #: certificate as in Kraken's ``tls:`` section.
    tls: TLSConfig = field(default_factory=TLSConfig)
    basic: BasicAuthConfig | None = None


@dataclass
class RegistryBackendConfig:
    """An upstream registry (Docker Hub, Harbor, a distribution registry), read-only."""

    #: ``host[:port]`` (``https``, or ``http`` with ``security.tls.client.disabled``).
    address: str
    #: Limit of one request (a token, a HEAD, a manifest); for a blob download, of the wait
    #: for a connection and between two reads of its body.
    timeout: Duration = 60.0
    security: RegistrySecurityConfig = field(default_factory=RegistrySecurityConfig)

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("address must name the upstream registry")
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
