"""Storage backends: where origins and build-index keep blobs and tags for good.

See docs/CONTRACTS.md ("Storage backends"). Components build a :class:`BackendRouter` from
their ``backends:`` (and ``auth:``) config and ask it for the backend of each namespace. The
kinds of backend are registered in :mod:`kraken.backend.registry`.
"""
from kraken.backend.base import (
    Backend,
    BackendContext,
    BackendError,
    BackendNotFound,
    BlobInfo,
    Credentials,
    InvalidName,
    ReadOnlyBackend,
)
from kraken.backend.config import AuthConfig, BackendConfig, NamespaceBackendConfig
from kraken.backend.file import FileBackend, FileBackendConfig
from kraken.backend.namepath import NamePath, ObjectLayout, get_name_path
from kraken.backend.registry import BACKENDS, BackendKind, BackendRegistry
from kraken.backend.router import BackendRouter, build_router, create_backend
from kraken.backend.testfs import TestfsBackend, TestfsBackendConfig

__all__ = [
    "BACKENDS",
    "AuthConfig",
    "Backend",
    "BackendConfig",
    "BackendContext",
    "BackendError",
    "BackendKind",
    "BackendNotFound",
    "BackendRegistry",
    "BackendRouter",
    "BlobInfo",
    "Credentials",
    "FileBackend",
    "FileBackendConfig",
    "InvalidName",
    "NamePath",
    "NamespaceBackendConfig",
    "ObjectLayout",
    "ReadOnlyBackend",
    "TestfsBackend",
    "TestfsBackendConfig",
    "build_router",
    "create_backend",
    "get_name_path",
]
