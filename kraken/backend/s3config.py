"""The ``s3`` backend's config section and the boto3 client it builds.

The keys are Kraken's (lib/backend/s3backend), so an origin or build-index config written for
Kraken moves over unchanged; the defaults are Kraken's too. Credentials come from the
``auth:`` section when ``username`` names a set there, in Kraken's shape
(``auth: {s3: {<username>: {s3: {aws_access_key_id, aws_secret_access_key, aws_session_token}}}}``,
the fields may also sit directly under ``<username>``); otherwise boto3's standard chain
(environment, shared credentials file, instance or task role) decides.

Timeouts and retries are the component's ``http_client:`` section: ``connect_timeout`` and
``read_timeout`` bound every S3 request (so an endpoint that stops answering fails the call
instead of hanging it), and ``retries`` is botocore's number of further attempts on connection
errors, throttling and 5xx answers.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kraken.backend.base import Credentials
from kraken.backend.namepath import NamePathKind, ObjectLayout
from kraken.config import ByteSize, ConfigError
from kraken.http.config import HttpClientConfig
from kraken.http.urls import base_url

#: S3 refuses to complete a multipart upload whose parts (all but the last) are smaller.
MIN_PART_SIZE = 5 << 20
#: S3's limits on a part and on the keys of one listing page.
MAX_PART_SIZE = 5 << 30
MAX_LIST_KEYS = 1000

#: The fields of one credential set (Kraken's names for them).
CREDENTIAL_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


@dataclass
class S3BackendConfig:
    """An S3 bucket (or an S3-compatible store at ``endpoint``), objects under ``root_directory``."""

    region: str
    bucket: str
    #: Host (``minio:9000``) or URL of an S3-compatible endpoint; empty: AWS's own for ``region``.
    endpoint: str = ""
    #: Plain HTTP to ``endpoint`` (when it names no scheme).
    disable_ssl: bool = False
    #: ``endpoint/bucket/key`` instead of ``bucket.endpoint/key`` (most S3-compatible stores).
    force_path_style: bool = False
    #: Key prefix of every object; Kraken writes it absolute (``/``, ``/kraken``), both spellings work.
    root_directory: str = ""
    name_path: NamePathKind = "identity"
    #: The credential set of ``auth: {s3: ...}`` to use; empty (or no such set): boto3's chain.
    username: str = ""
    #: A file larger than this is uploaded in parts of this size.
    upload_part_size: ByteSize = 64 << 20
    #: An object larger than this is downloaded as ranges of this size, in parallel.
    download_part_size: ByteSize = 64 << 20
    #: Parts of one upload (ranges of one download) in flight at once.
    upload_concurrency: int = 10
    download_concurrency: int = 10
    #: Keys asked for per listing request (S3 answers at most 1000).
    list_max_keys: int = 250

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("bucket must be set")
        if not self.region:
            raise ValueError("region must be set")
        if not MIN_PART_SIZE <= self.upload_part_size <= MAX_PART_SIZE:
            raise ValueError(f"upload_part_size must be between {MIN_PART_SIZE} (5MB) and {MAX_PART_SIZE} (5GB)")
        if self.download_part_size < 1:
            raise ValueError("download_part_size must be >= 1")
        if self.upload_concurrency < 1 or self.download_concurrency < 1:
            raise ValueError("upload_concurrency and download_concurrency must be >= 1")
        if not 1 <= self.list_max_keys <= MAX_LIST_KEYS:
            raise ValueError(f"list_max_keys must be between 1 and {MAX_LIST_KEYS}")
        self.layout()  # a bad root_directory or name_path fails at load, not at the first request

    def layout(self) -> ObjectLayout:
        return ObjectLayout(self.root_directory, self.name_path)

    def endpoint_url(self) -> str | None:
        if not self.endpoint:
            return None
        return base_url(self.endpoint, secure=not self.disable_ssl)


def static_credentials(config: S3BackendConfig, credentials: Mapping[str, Credentials]) -> dict[str, str] | None:
    """boto3's keyword arguments for the ``auth:`` set named ``username``, or None (boto3's chain).

    A set that exists but is incomplete or has unknown fields is a config error (its field
    names are given, never a value).
    """
    found = credentials.get(config.username) if config.username else None
    if found is None:
        return None
    where = f"auth: s3: {config.username}"
    unknown = sorted(set(found) - set(CREDENTIAL_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(CREDENTIAL_FIELDS)})")
    missing = [f for f in CREDENTIAL_FIELDS[:2] if f not in found]
    if missing:
        raise ConfigError(f"{where}: {missing[0]} is missing")
    return {name: secret.reveal() for name, secret in found.items()}


def make_client(config: S3BackendConfig, credentials: dict[str, str] | None, http: HttpClientConfig,
                max_connections: int) -> Any:
    """A botocore S3 client (thread-safe; its calls block: run them in worker threads).
    boto3 is imported here, not with the config: a component without an ``s3`` backend never
    loads it (about 20 MiB resident)."""
    import boto3
    from botocore.config import Config as BotoConfig

    session = boto3.session.Session(region_name=config.region, **(credentials or {}))
    boto_config = BotoConfig(
        connect_timeout=http.connect_timeout,
        read_timeout=http.read_timeout,
        retries={"mode": "standard", "total_max_attempts": http.retries + 1},
        max_pool_connections=max_connections,
        s3={"addressing_style": "path" if config.force_path_style else "auto"},
    )
    return session.client("s3", endpoint_url=config.endpoint_url(), use_ssl=not config.disable_ssl,
                          config=boto_config)
