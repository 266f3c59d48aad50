"""The tracker's configuration (``config/tracker/*.yaml``).

Origins are known twice over: by their HTTP address (``origins.hosts``, the hash ring that
says which origins own a blob, spelled exactly as in the origins' own ``ring.hosts`` so both
sides agree on owners) and by the address they seed on (``origin_p2p``). The tracker hands
the latter to agents, so every ring host must have an ``origin_p2p`` entry: an explicit map
rather than a port convention, because origins may seed on any port or interface. Entries for
hosts not on the ring are ignored: config files are deep-merged, so an overlay that replaces
``origins.hosts`` cannot remove the entries its base file had.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kraken.config import ByteSize, Duration, ListenConfig
from kraken.http.addresses import split_host_port
from kraken.http.config import HttpClientConfig, HttpServerConfig, TLSConfig
from kraken.ring import RingConfig

DEFAULT_PORT = 15003

#: Which announces need a cluster client certificate (see :mod:`kraken.tracker.admission`).
CertificateRule = Literal["seeders", "all", "none"]


@dataclass
class RedisConfig:
    """Where the shared peer store lives when ``store: redis`` (several trackers share it)."""

    addr: str = "127.0.0.1:14001"
    db: int = 0
    password: str = ""
    # Connect and per-command timeout.
    timeout: Duration = 2.0
    # Connections to Redis at most; announces beyond wait for one (up to ``timeout``), where
    # an unbounded pool would open one per announce in flight and fail beyond redis-py's cap.
    max_connections: int = 32
    # Every key starts with this, so several clusters can share one Redis.
    key_prefix: str = "kraken:tracker:"

    def __post_init__(self) -> None:
        split_host_port(self.addr)
        if self.timeout <= 0:
            raise ValueError("redis.timeout must be positive")
        if self.max_connections < 1:
            raise ValueError("redis.max_connections must be >= 1")


@dataclass
class MetainfoConfig:
    """The metainfo proxied from origins and its cache."""

    # The cache holds at most this many bytes of metainfo (least recently used out first).
    cache_size: ByteSize = 64 << 20
    # A cached metainfo is asked from the origins again after this long.
    cache_ttl: Duration = 3600.0
    # While the origin answers 202 (fetching from its backend), wait this long before passing
    # the 202 on; agents poll anyway, so this only saves them a round trip for quick fetches.
    poll_timeout: Duration = 1.0

    def __post_init__(self) -> None:
        if self.cache_ttl < 0 or self.poll_timeout < 0:
            raise ValueError("metainfo durations must not be negative")


@dataclass
class LimitsConfig:
    """Bounds on what announces can make the peer store hold (see docs/ARCHITECTURE.md,
    "Tracker bounds"). A torrent counts for an address, and in the total, while that address
    (any address) has announced it within ``peer_ttl``. Origins are exempt from the per-address
    limits."""

    # Peers of one torrent at one IP address: one more evicts that address's least recently seen
    # (one host runs one agent; development clusters run several on 127.0.0.1).
    peers_per_ip: int = 32
    # Torrents one IP address may announce; announces of further ones are refused with 429.
    torrents_per_ip: int = 5000
    # Torrents in the store; announces of a new torrent beyond this are refused with 503.
    torrents: int = 100_000

    def __post_init__(self) -> None:
        if min(self.peers_per_ip, self.torrents_per_ip, self.torrents) < 1:
            raise ValueError("limits must be >= 1")


@dataclass
class ProbeConfig:
    """The check that an announced seeder accepts connections on its port (a TCP connect, then
    close); seeders not confirmed yet come after origins and leechers in the handout."""

    # Connect timeout of one probe.
    timeout: Duration = 1.0
    # A probe's answer (either way) is kept this long; the seeder's next announce after that
    # probes it again.
    ttl: Duration = 30.0
    # Probes in flight at once; announces beyond leave their seeders unconfirmed for now.
    concurrency: int = 32

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.ttl <= 0 or self.concurrency < 1:
            raise ValueError("probe.timeout and probe.ttl must be positive, probe.concurrency >= 1")


@dataclass
class TrackerConfig:
    """Every key, with its meaning, is in ``config/tracker/base.yaml``."""

    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=DEFAULT_PORT))
    http: HttpServerConfig = field(default_factory=HttpServerConfig)
    http_client: HttpClientConfig = field(default_factory=HttpClientConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    origins: RingConfig = field(default_factory=RingConfig)
    origin_p2p: dict[str, str] = field(default_factory=dict)
    announce_interval: Duration = 5.0
    peer_ttl: Duration = 3600.0
    max_peers_returned: int = 50
    trust_ip_param: bool = False
    announce_requires_certificate: CertificateRule = "seeders"
    store: Literal["memory", "redis"] = "memory"
    redis: RedisConfig = field(default_factory=RedisConfig)
    metainfo: MetainfoConfig = field(default_factory=MetainfoConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        if self.announce_interval <= 0:
            raise ValueError("announce_interval must be positive")
        if self.peer_ttl <= self.announce_interval:
            raise ValueError("peer_ttl must be longer than announce_interval, or peers expire between announces")
        if self.max_peers_returned < 1:
            raise ValueError("max_peers_returned must be >= 1")
        missing = [h for h in self.origins.hosts if h not in self.origin_p2p]
        if missing:
            raise ValueError(f"origin_p2p has no P2P address for origin(s) {', '.join(missing)}")
        for addr in self.origin_p2p.values():
            split_host_port(addr)
        if self.announce_requires_certificate == "all" and not self.tls.verifies_clients:
            # Without both the tracker sees no certificate and would silently take every announce.
            raise ValueError("announce_requires_certificate: all needs mTLS on the tracker (tls.server and tls.cas)")
