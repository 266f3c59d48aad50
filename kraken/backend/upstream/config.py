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
from kraken.http.config import SecretFile, TLSConfig, X509Pair


@dataclass
class BasicAuthConfig:
    """Credentials for the upstream: sent when it asks for Basic, and to its token server."""

    username: str = ""
    password: Secret | None = None


@dataclass
class UpstreamTLSConfig:
    """How the upstream is reached, in the client half of Kraken's ``tls:`` shape."""

    #: Name the upstream's certificate must carry (default: the host dialled).
    name: str = ""
    #: CAs the upstream's certificate must chain to; none: the system's CAs.
    cas: list[SecretFile] = field(default_factory=list)
    #: ``disabled: true``: plain HTTP. A ``cert``/``key`` pair is presented to the upstream.
    client: X509Pair = field(default_factory=X509Pair)

    def __post_init__(self) -> None:
        self.client.check("client")
        if self.client.configured() and not self.cas:
            raise ValueError("tls.client: a client certificate needs tls.cas to verify the upstream by")

    def as_tls(self) -> TLSConfig:
        """The section as :func:`~kraken.http.client.create_client` takes it."""
        return TLSConfig(name=self.name, cas=self.cas, client=self.client)


@dataclass
class RegistrySecurityConfig:
    tls: UpstreamTLSConfig = field(default_factory=UpstreamTLSConfig)
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
