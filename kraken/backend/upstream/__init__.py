"""Pull-through backends: an upstream registry (Docker Hub, Harbor, distribution) read as a
storage backend (``registry_blob``, ``registry_tag``); see :mod:`.backends`."""
from kraken.backend.upstream.backends import CorruptUpstreamBlob, RegistryBlobBackend, RegistryTagBackend
from kraken.backend.upstream.config import BasicAuthConfig, RegistryBackendConfig, RegistrySecurityConfig

__all__ = [
    "BasicAuthConfig",
    "CorruptUpstreamBlob",
    "RegistryBackendConfig",
    "RegistryBlobBackend",
    "RegistrySecurityConfig",
    "RegistryTagBackend",
]
