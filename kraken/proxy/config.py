"""The proxy's configuration (``config/proxy/*.yaml``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from kraken.buildindex.hosts import BuildIndexHostsConfig
from kraken.config import ByteSize, ConfigError, Duration, ListenConfig
from kraken.http.config import HttpClientConfig, HttpServerConfig, TLSConfig
from kraken.registry.auth import AuthConfig
from kraken.registry.references import DEFAULT_MAX_REFERENCES
from kraken.ring import RingConfig

DEFAULT_PORT = 15000


@dataclass
class StoreConfig:
    """Where uploads are staged (streamed to disk and verified) before they go to an origin.

    Nothing stays here: a verified blob is deleted once its origin has it."""

    root: str


#: The ``build_index:`` section: one address, a list or a DNS name (failover between them).
BuildIndexConfig = BuildIndexHostsConfig


@dataclass
class ProxyConfig:
    store: StoreConfig
    origins: RingConfig
    build_index: BuildIndexConfig = field(default_factory=BuildIndexConfig)
    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=DEFAULT_PORT))
    http: HttpServerConfig = field(default_factory=HttpServerConfig)
    http_client: HttpClientConfig = field(default_factory=HttpClientConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    # Push (and pull) authentication, in distribution's shapes: htpasswd or token. Unset:
    # every client may push. May come from the secrets file (--secrets).
    auth: AuthConfig | None = None
    # Manifests are read into memory to validate them; bigger ones are refused with 413.
    max_manifest_size: ByteSize = 4 << 20
    # Most blobs and child manifests one pushed manifest may reference (more: 400
    # MANIFEST_INVALID before any origin is asked). distribution calls this
    # validation.manifests.referencelimit; see kraken.registry.references.
    max_manifest_references: int = DEFAULT_MAX_REFERENCES
    # Manifests read from the origins are kept on disk (store.root/manifests) and served from
    # there; least recently read ones go beyond this many bytes.
    manifest_cache_size: ByteSize = 256 << 20
    # Upload sessions not finished within this time are deleted with their bytes.
    upload_ttl: Duration = 3600.0
    # Upload sessions open at once from one client address (more: 429 TOOMANYREQUESTS) and
    # in total (more: 503 UNAVAILABLE). Each holds a file until it ends or upload_ttl passes.
    max_uploads_per_client: int = 100
    max_uploads: int = 1000

    def __post_init__(self) -> None:
        for key in ("max_uploads_per_client", "max_uploads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_manifest_references < 1:
            raise ConfigError(f"max_manifest_references must be >= 1, got {self.max_manifest_references}")
