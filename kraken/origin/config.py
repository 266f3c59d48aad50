"""The origin's configuration (``config/origin/*.yaml``)."""
from __future__ import annotations

import socket
from dataclasses import dataclass, field

from kraken.backend.config import AuthConfig, NamespaceBackendConfig
from kraken.config import ByteSize, Duration, ListenConfig
from kraken.core.metainfo import DEFAULT_PIECE_LENGTHS
from kraken.http.config import HttpClientConfig, HttpServerConfig, TLSConfig
from kraken.origin.foreground import ForegroundConfig
from kraken.p2p.config import ORIGIN_P2P_PORT, P2PConfig
from kraken.p2p.trackers import TrackersConfig
from kraken.ring import RingConfig

DEFAULT_PORT = 15002


@dataclass
class StoreConfig:
    """Where blobs (``cache/``, ``uploads/``) and the persisted task queues live."""

    root: str = "/var/lib/kraken/origin"


@dataclass
class WritebackConfig:
    """Retry schedule of the write-back of pushed blobs to their storage backend."""

    retry_interval: Duration = 1.0
    max_retry_interval: Duration = 30.0
    concurrency: int = 4


@dataclass
class ReplicationConfig:
    """Copying a pushed blob to the other ring owners (only when ``ring.max_replica > 1``).

    A replica defers its own write-back by ``writeback_delay``: the origin that took the push
    normally writes the blob back first, and the replica then only has to see it is there.
    ``sync_copies`` of the copies are made before the push is acknowledged (each within
    ``sync_timeout``; the rest, and any that failed, from the queue): a blob acknowledged
    is then on two origins, so losing one right after the push loses nothing a client relies on.
    """

    retry_interval: Duration = 1.0
    max_retry_interval: Duration = 60.0
    concurrency: int = 2
    writeback_delay: Duration = 300.0
    sync_copies: int = 1
    sync_timeout: Duration = 30.0

    def __post_init__(self) -> None:
        if self.sync_copies < 0 or self.sync_timeout <= 0:
            raise ValueError("replication.sync_copies must be >= 0 and sync_timeout > 0")


@dataclass
class MetainfoConfig:
    """Piece length by blob size: the entry with the largest threshold <= size wins."""

    piece_lengths: dict[ByteSize, ByteSize] = field(default_factory=lambda: dict(DEFAULT_PIECE_LENGTHS))

    def __post_init__(self) -> None:
        if 0 not in self.piece_lengths:
            raise ValueError("piece_lengths needs a 0 threshold (the piece length of the smallest blobs)")
        if any(length <= 0 for length in self.piece_lengths.values()):
            raise ValueError("piece lengths must be positive")


@dataclass
class CleanupConfig:
    """Eviction of cached blobs (only those whose write-back has succeeded).

    Every ``interval``: blobs not read for ``tti`` are evicted; then, if the cache holds more
    than ``disk_usage_threshold`` bytes (0 = no limit), the least recently read are evicted
    until it holds less. Uploads idle for ``upload_ttl`` are deleted.
    """

    interval: Duration = 300.0
    tti: Duration = 24 * 3600.0
    disk_usage_threshold: ByteSize = 0
    upload_ttl: Duration = 3600.0


@dataclass
class FetchConfig:
    """Lazy fetches of missing blobs from the storage backend."""

    concurrency: int = 8


@dataclass
class TrackerConfig(TrackersConfig):
    """The trackers this origin announces the blobs it seeds to (``addr: host:port``, or
    several: ``addrs``, ``dns``; each announce goes to the first that answers).

    Empty (the default): the origin announces nothing and only answers the peers that connect
    to it. Announcing is not needed for agents to find an origin: the tracker always hands out
    a blob's owning origins itself, at their ``origin_p2p`` address. When set, the address
    the tracker sees (the announce's source IP and ``p2p.listen.port``) must be this origin's
    ``origin_p2p`` entry, or agents are handed the origin twice.
    """


#: How long an origin keeps seeding a blob that uploads nothing. It must be longer than the
#: tracker's ``metainfo.cache_ttl`` (1h by default): the tracker's metainfo request is what
#: makes the origin seed a blob, and the tracker asks only once per ``cache_ttl``, so a torrent
#: dropped sooner would leave agents handed an origin that no longer serves the blob.
ORIGIN_SEED_IDLE_TIME = 2 * 3600.0


@dataclass
class OriginP2PConfig(P2PConfig):
    """:class:`~kraken.p2p.P2PConfig` with an origin's defaults: its own port, longer seeding.

    A subclass rather than a default instance, so a config that gives only some ``p2p`` keys
    still gets the origin's defaults for the others, not an agent's.
    """

    listen: ListenConfig = field(default_factory=lambda: ListenConfig(host="0.0.0.0", port=ORIGIN_P2P_PORT))
    seed_idle_time: Duration = ORIGIN_SEED_IDLE_TIME


@dataclass
class OriginConfig:
    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=DEFAULT_PORT))
    http: HttpServerConfig = field(default_factory=HttpServerConfig)
    http_client: HttpClientConfig = field(default_factory=HttpClientConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    # This origin's name on the ring ("host:port"); empty means "<hostname>:<listen port>".
    advertise: str = ""
    ring: RingConfig = field(default_factory=RingConfig)
    backends: list[NamespaceBackendConfig] = field(default_factory=list)
    # Backend credentials (kind -> set -> secrets); keep them in the --secrets file.
    auth: AuthConfig = field(default_factory=dict)
    writeback: WritebackConfig = field(default_factory=WritebackConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    metainfo: MetainfoConfig = field(default_factory=MetainfoConfig)
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    # Where this origin seeds blobs to agents (BitTorrent). The tracker hands agents this
    # address from its ``origin_p2p`` map, so the port must match that entry.
    p2p: OriginP2PConfig = field(default_factory=OriginP2PConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    # Also seed every blob as soon as it is committed, not only once the tracker asks for its
    # metainfo (which it does when an agent is about to download it).
    seed_on_commit: bool = False
    # Background work on pushed blobs (write-back, metainfo ahead of requests) defers to
    # client transfers (kraken.origin.foreground).
    background: ForegroundConfig = field(default_factory=ForegroundConfig)

    def __post_init__(self) -> None:
        self.p2p.tls.resolve(self.tls.cas)

    def identity(self) -> str:
        """The ``host:port`` other components know this origin by."""
        return self.advertise or f"{socket.gethostname()}:{self.listen.port}"
