"""The ``gcs`` backend's config section (``backends: [{backend: {gcs: ...}}]``).

Apart from :mod:`kraken.backend.gcs` so that parsing a config (every origin, build-index and
testfs registers every backend kind) does not import google-cloud-storage: that library is
imported only when a ``gcs`` backend is built (:mod:`kraken.backend.registry`).
"""
from __future__ import annotations

from dataclasses import dataclass

from kraken.backend.namepath import NamePathKind, check_relative_path
from kraken.config import ByteSize, ConfigError, Duration

#: Kraken's default part size (lib/backend/constants.go).
DEFAULT_CHUNK_SIZE = 64 << 20
#: The resumable-upload protocol wants every chunk but the last to be a multiple of this.
CHUNK_ALIGN = 256 << 10


@dataclass
class GcsBackendConfig:
    """A Google Cloud Storage bucket (or an emulator of one)."""

    bucket: str
    root_directory: str = ""
    name_path: NamePathKind = "identity"
    username: str = ""
    upload_chunk_size: ByteSize = DEFAULT_CHUNK_SIZE
    upload_part_size: ByteSize | None = None
    list_max_keys: int = 250
    endpoint: str = ""
    concurrency: int = 8
    timeout: Duration = 60.0
    retry_deadline: Duration = 30.0

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ConfigError("bucket is required")
        root = self.root_directory.strip("/")
        if root:
            check_relative_path(root, "root_directory")
        if self.upload_part_size is not None and self.upload_chunk_size != DEFAULT_CHUNK_SIZE:
            raise ConfigError("set upload_chunk_size or upload_part_size (Kraken's spelling), not both")
        chunk = self.chunk_size
        if chunk <= 0 or chunk % CHUNK_ALIGN:
            raise ConfigError(f"upload_chunk_size must be a positive multiple of 256KiB, got {chunk}")
        if self.list_max_keys < 1:
            raise ConfigError(f"list_max_keys must be >= 1, got {self.list_max_keys}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.timeout <= 0 or self.retry_deadline < 0:
            raise ConfigError("timeout must be > 0 and retry_deadline >= 0")

    @property
    def chunk_size(self) -> int:
        """``upload_part_size`` if given (Kraken's YAML key for this setting), else ``upload_chunk_size``."""
        return self.upload_chunk_size if self.upload_part_size is None else self.upload_part_size
