"""The proxy's configuration (``config/proxy/*.yaml``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from kraken.config import ByteSize, Duration, HttpServerConfig, ListenConfig
from kraken.ring import RingConfig

DEFAULT_PORT = 15000


@dataclass
class StoreConfig:
    """Where uploads are staged (streamed to disk and verified) before they go to an origin.

    Nothing stays here: a verified blob is deleted once its origin has it."""

    root: str


@dataclass
class BuildIndexConfig:
    addr: str = "localhost:15004"


@dataclass
class ProxyConfig:
    store: StoreConfig
    origins: RingConfig
    build_index: BuildIndexConfig = field(default_factory=BuildIndexConfig)
    listen: ListenConfig = field(default_factory=lambda: ListenConfig(port=DEFAULT_PORT))
    http: HttpServerConfig = field(default_factory=HttpServerConfig)
    # Manifests are read into memory to validate them; bigger ones are refused with 413.
    max_manifest_size: ByteSize = 4 << 20
    # Manifests read from the origins are kept on disk (store.root/manifests) and served from
    # there; least recently read ones go beyond this many bytes.
    manifest_cache_size: ByteSize = 256 << 20
    # Upload sessions not finished within this time are deleted with their bytes.
    upload_ttl: Duration = 3600.0
