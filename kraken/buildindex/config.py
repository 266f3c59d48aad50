"""build-index configuration (``config/build-index/*.yaml``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from kraken.backend.config import AuthConfig, NamespaceBackendConfig
from kraken.buildindex.remotes import ClusterConfig, TagReplicationConfig, TagServerConfig, build_remotes
from kraken.config import ByteSize, ConfigError, Duration, ListenConfig
from kraken.http.config import HttpClientConfig, HttpServerConfig, TLSConfig
from kraken.registry.references import DEFAULT_MAX_REFERENCES
from kraken.ring import RingConfig

DEFAULT_PORT = 15004


@dataclass
class StoreConfig:
    """Where the local tag cache lives.

    The cache is a fallback, not the source of truth: the backend holds every tag, and the
    cache answers reads only within ``cache_ttl`` or while the backend is unreachable. With
    ``tag_store.write_through: false`` it also holds the tags not yet written back
    (``root/pending``) and their write-back queue (``root/tag_writeback.db``).
    """

    root: str


@dataclass
class TagStoreConfig:
    """How a tag PUT reaches the backend (Kraken's ``tag_store`` section).

    ``write_through: true`` (the default, as in Kraken's ``config/build-index/base.yaml``): a
    PUT returns once the backend holds the tag, and fails (503) while it cannot be written.
    ``false``: a PUT returns once the tag is on this node's disk and its write-back is queued
    (persisted, retried with backoff from ``retry_interval`` up to ``max_retry_interval``), so
    pushes keep working while the backend is down; other nodes see the tag once it is written.
    """

    write_through: bool = True
    retry_interval: Duration = 1.0
    max_retry_interval: Duration = 60.0
    # Tag write-backs in flight at once.
    concurrency: int = 4

    def __post_init__(self) -> None:
        if self.retry_interval <= 0 or self.max_retry_interval < self.retry_interval:
            raise ConfigError("tag_store: want 0 < retry_interval <= max_retry_interval")
        if self.concurrency < 1:
            raise ConfigError(f"tag_store.concurrency must be >= 1, got {self.concurrency}")


@dataclass
class BuildIndexConfig:
    store: StoreConfig
    origins: RingConfig
    # Matched against the tag's repository name (re.fullmatch, first match wins).
    backends: list[NamespaceBackendConfig]
    # Backend credentials (kind -> set -> secrets); keep them in the --secrets file.
    auth: AuthConfig = field(default_factory=dict)
    tag_store: TagStoreConfig = field(default_factory=TagStoreConfig)
    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=DEFAULT_PORT))
    http: HttpServerConfig = field(default_factory=HttpServerConfig)
    http_client: HttpClientConfig = field(default_factory=HttpClientConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    # How long a digest read from the backend (or written through this node) may be served
    # from memory without asking the backend again. 0 = every read asks the backend, which is
    # what several nodes sharing one backend need to never serve another node's stale tag.
    cache_ttl: Duration = 0.0
    # Manifests are read into memory to check their references; bigger ones are refused.
    max_manifest_size: ByteSize = 4 << 20
    # Origin requests in flight at once while checking one manifest's references.
    verify_concurrency: int = 16
    # Most blobs and child manifests one manifest may reference (more: the tag is refused
    # before any origin is asked). distribution calls this validation.manifests.referencelimit;
    # see kraken.registry.references.
    max_manifest_references: int = DEFAULT_MAX_REFERENCES
    # Referrers (OCI referrers API) kept per (repository, subject): a PUT beyond it is refused,
    # a list never answers more.
    max_referrers: int = 256
    # A referrer's descriptor (its annotations, mostly) must fit in this many bytes of JSON.
    max_referrer_size: ByteSize = 16 << 10
    # Cross-cluster replication (kraken.buildindex.remotes): remote build-index "host:port" ->
    # regexes searched in "repo:tag"; a replicated tag PUT copies the image to each match.
    remotes: dict[str, list[str]] = field(default_factory=dict)
    tag_replication: TagReplicationConfig = field(default_factory=TagReplicationConfig)
    # The other build-indexes of this cluster: each gets a delayed duplicate of every
    # replication task, so one dying node loses none.
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tagserver: TagServerConfig = field(default_factory=TagServerConfig)

    def __post_init__(self) -> None:
        if self.cache_ttl < 0:
            raise ConfigError(f"cache_ttl must be >= 0, got {self.cache_ttl}")
        if self.verify_concurrency < 1:
            raise ConfigError(f"verify_concurrency must be >= 1, got {self.verify_concurrency}")
        if self.max_manifest_references < 1:
            raise ConfigError(f"max_manifest_references must be >= 1, got {self.max_manifest_references}")
        if self.max_referrers < 1:
            raise ConfigError(f"max_referrers must be >= 1, got {self.max_referrers}")
        build_remotes(self.remotes)
