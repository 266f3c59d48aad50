"""The origin's configuration (``config/origin/*.yaml``)."""
from __future__ import annotations

import socket
from dataclasses import dataclass, field

from kraken.backend.config import NamespaceBackendConfig
from kraken.config import ByteSize, Duration, ListenConfig
from kraken.core.metainfo import DEFAULT_PIECE_LENGTHS
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
    """

    retry_interval: Duration = 1.0
    max_retry_interval: Duration = 60.0
    concurrency: int = 2
    writeback_delay: Duration = 300.0


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
class OriginConfig:
    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=DEFAULT_PORT))
    store: StoreConfig = field(default_factory=StoreConfig)
    # This origin's name on the ring ("host:port"); empty means "<hostname>:<listen port>".
    advertise: str = ""
    ring: RingConfig = field(default_factory=RingConfig)
    backends: list[NamespaceBackendConfig] = field(default_factory=list)
    writeback: WritebackConfig = field(default_factory=WritebackConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    metainfo: MetainfoConfig = field(default_factory=MetainfoConfig)
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)

    def identity(self) -> str:
        """The ``host:port`` other components know this origin by."""
        return self.advertise or f"{socket.gethostname()}:{self.listen.port}"
