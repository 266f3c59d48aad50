"""Storage backends: where origins and build-index keep blobs and tags for good.

See docs/CONTRACTS.md ("Storage backends"). Components build a :class:`BackendRouter` from
their ``backends:`` config and ask it for the backend of each namespace.
"""
from kraken.backend.base import Backend, BackendError, BackendNotFound, BlobInfo, InvalidName
from kraken.backend.config import BackendConfig, FileBackendConfig, NamespaceBackendConfig, TestfsBackendConfig
from kraken.backend.file import FileBackend
from kraken.backend.namepath import NamePath, ObjectLayout, get_name_path
from kraken.backend.router import BackendRouter, build_router, create_backend
from kraken.backend.testfs import TestfsBackend

__all__ = [
    "Backend",
    "BackendConfig",
    "BackendError",
    "BackendNotFound",
    "BackendRouter",
    "BlobInfo",
    "FileBackend",
    "FileBackendConfig",
    "InvalidName",
    "NamePath",
    "NamespaceBackendConfig",
    "ObjectLayout",
    "TestfsBackend",
    "TestfsBackendConfig",
    "build_router",
    "create_backend",
    "get_name_path",
]
