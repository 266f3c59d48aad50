"""The agent's configuration (``config/agent/*.yaml``).

One process serves two HTTP ports and one P2P port: the read-only registry (``listen``,
16000, what docker pulls from), the agent server (``server``, 16002: health, tags, generic
blobs, deletes, metrics) and the BitTorrent session (``p2p.listen``, 16001).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kraken.agent.preload import PreloadConfig
from kraken.buildindex.hosts import BuildIndexHostsConfig
from kraken.config import ByteSize, Duration, ListenConfig
from kraken.http.allow import DEFAULT_ALLOWED_CIDRS, parse_networks
from kraken.http.config import HttpClientConfig, HttpServerConfig, TLSConfig
from kraken.p2p.config import P2PConfig
from kraken.p2p.trackers import TrackersConfig
from kraken.ring import RingConfig

DEFAULT_REGISTRY_PORT = 16000
DEFAULT_SERVER_PORT = 16002


@dataclass
class StoreConfig:
    """``<root>/cache`` holds verified blobs (a CAStore, kept across restarts);
    ``<root>/download`` holds torrents being downloaded (emptied at start)."""

    root: str


@dataclass
class DownloadConfig:
    # A P2P download not complete within this long fails (the registry answers 503).
    timeout: Duration = 900.0
    # How long to keep asking the tracker for metainfo while the origin fetches the blob
    # from its backend (202).
    metainfo_timeout: Duration = 300.0
    # A P2P download that receives nothing for this long is dropped and the blob fetched over
    # HTTP from its owning origin instead (needs `origins`; 0: never).
    fallback_after: Duration = 30.0
    # Blobs of at most this many bytes (manifests, image configs) are read over HTTP from their
    # owning origin instead of P2P, then seeded (needs `origins`; 0: always P2P). Setting up a
    # BitTorrent connection costs tens of ms, which is the whole time of a small blob.
    small_blob_max: ByteSize = 256 << 10

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.metainfo_timeout <= 0:
            raise ValueError("download timeouts must be positive")
        if self.fallback_after < 0:
            raise ValueError("download.fallback_after must be >= 0 (0 = never)")
        if self.small_blob_max < 0:
            raise ValueError("download.small_blob_max must be >= 0 (0 = always P2P)")


@dataclass
class CleanupConfig:
    """Eviction from the cache; only the agent's own cache files count."""

    # How often the sweep runs.
    interval: Duration = 60.0
    # Blobs not read for this long are evicted (0: never by idle time).
    tti: Duration = 6 * 3600.0
    # Above this many bytes in the cache the least recently read blobs go (0: no limit).
    disk_usage_threshold: ByteSize = 0

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("cleanup.interval must be positive")
        if self.tti < 0 or self.disk_usage_threshold < 0:
            raise ValueError("cleanup.tti and cleanup.disk_usage_threshold must be >= 0 (0 = off)")


@dataclass
class AgentHttpClientConfig(HttpClientConfig):
    """:class:`~kraken.http.config.HttpClientConfig` with the agent's defaults: quicker to
    give up, so a pull waiting on a dead tracker gets its 503 soon.

    A subclass rather than a default instance, so a config that gives only some
    ``http_client`` keys still gets the agent's defaults for the others.
    """

    connect_timeout: Duration = 3.0
    retries: int = 2


@dataclass
class AgentConfig:
    """Every key, with its meaning, is in ``config/agent/base.yaml``."""

    store: StoreConfig
    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=DEFAULT_REGISTRY_PORT))
    http: HttpServerConfig = field(default_factory=HttpServerConfig)
    http_client: AgentHttpClientConfig = field(default_factory=AgentHttpClientConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    server: ListenConfig = field(default_factory=lambda: ListenConfig(port=DEFAULT_SERVER_PORT))
    p2p: P2PConfig = field(default_factory=P2PConfig)
    tracker: TrackersConfig = field(default_factory=lambda: TrackersConfig("localhost:15003"))
    build_index: BuildIndexHostsConfig = field(default_factory=BuildIndexHostsConfig)
    # The origins' ring, for reading small blobs (`download.small_blob_max`) and blobs whose P2P
    # download makes no progress (`download.fallback_after`) over HTTP; empty hosts: P2P only.
    origins: RingConfig = field(default_factory=RingConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    preload: PreloadConfig = field(default_factory=PreloadConfig)
    # Manifests are read into memory; a bigger blob asked for as a manifest is MANIFEST_UNKNOWN.
    max_manifest_size: ByteSize = 4 << 20
    # Who may call the registry (`listen`) and the agent server (`server`), by the connection's
    # source address (never a header): CIDRs or single addresses. Others get 403 (`/health`
    # excepted). Default: loopback and Docker's default bridge, i.e. this host and its containers.
    allowed_cidrs: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOWED_CIDRS))

    def __post_init__(self) -> None:
        if not self.tracker.configured():
            raise ValueError("tracker: give addr, addrs or dns")
        parse_networks(self.allowed_cidrs)
        self.p2p.tls.resolve(self.tls.cas)
