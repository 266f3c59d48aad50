"""The proxy's configuration (``config/proxy/*.yaml``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from kraken.buildindex.hosts import BuildIndexHostsConfig
from kraken.config import ByteSize, ConfigError, Duration, ListenConfig, Secret
from kraken.http.allow import DEFAULT_ALLOWED_CIDRS, parse_networks
from kraken.http.config import HttpClientConfig, HttpServerConfig, TLSConfig
from kraken.registry.auth import AuthConfig
from kraken.registry.references import DEFAULT_MAX_REFERENCES
from kraken.ring import RingConfig

DEFAULT_PORT = 15000
#: Kraken's port for the proxy's second server (preheat, registry notifications).
DEFAULT_SERVER_PORT = 15005


@dataclass
class StoreConfig:
    """Where uploads are staged (streamed to disk and verified) before they go to an origin.

    Nothing stays here: a verified blob is deleted once its origin has it."""

    root: str


#: The ``build_index:`` section: one address, a list or a DNS name (failover between them).
BuildIndexConfig = BuildIndexHostsConfig


@dataclass
class PreheatServerConfig:
    """The ``server:`` section: the proxy's second server (Kraken's :15005), where a registry's
    notifications and Harbor's preheat calls make the origins fetch an image's blobs before any
    agent asks (kraken.proxy.preheat_server). Absent: the proxy opens no second port."""

    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=DEFAULT_SERVER_PORT))
    # Callers (the registry's notifier, Harbor, operators) must come from these networks.
    allowed_cidrs: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOWED_CIDRS))
    # When set, the write endpoints also require ``Authorization: Bearer <token>`` (Harbor's
    # OAuth mode, distribution's endpoint ``headers``). Belongs in the secrets file.
    token: Secret | None = None
    # Preheat jobs remembered (finished ones are dropped oldest first); with this many queued
    # or running, a new one is refused with 503.
    max_jobs: int = 1000
    # Jobs running at once (the others wait, queued).
    max_running_jobs: int = 4
    # Blob prefetches in flight at once, over all jobs.
    concurrency: int = 16
    # How long one blob may take to reach its origins' caches before the job counts it failed.
    blob_timeout: Duration = 1800.0
    # A notification may arrive before its manifest is readable (distribution/distribution#2625):
    # the manifest is asked for again for this long.
    manifest_wait: Duration = 5.0
    # Blobs outside [min, max] bytes are skipped (Kraken's prefetch_min/max_blob_size); 0: no bound.
    prefetch_min_blob_size: ByteSize = 0
    prefetch_max_blob_size: ByteSize = 0

    def __post_init__(self) -> None:
        parse_networks(self.allowed_cidrs)
        for key in ("max_jobs", "max_running_jobs", "concurrency"):
            if getattr(self, key) < 1:
                raise ConfigError(f"server.{key} must be >= 1, got {getattr(self, key)}")
        if self.blob_timeout <= 0 or self.manifest_wait < 0:
            raise ConfigError("server.blob_timeout must be > 0 and server.manifest_wait >= 0")
        if self.prefetch_min_blob_size < 0 or self.prefetch_max_blob_size < 0:
            raise ConfigError("server.prefetch_min_blob_size and prefetch_max_blob_size must be >= 0")


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
    # The second server (preheat, registry notifications); absent: not opened.
    server: PreheatServerConfig | None = None

    def __post_init__(self) -> None:
        for key in ("max_uploads_per_client", "max_uploads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_manifest_references < 1:
            raise ConfigError(f"max_manifest_references must be >= 1, got {self.max_manifest_references}")
