"""What every registry handler needs: the storage, the mode, the upload sessions and limits."""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from aiohttp import web

from kraken.registry.errors import RegistryError
from kraken.registry.storage import RegistryStorage
from kraken.registry.stored_manifests import StoredManifests
from kraken.registry.uploads import UploadSessions


@dataclass
class RegistryContext:
    storage: RegistryStorage
    read_only: bool
    sessions: UploadSessions | None
    max_manifest_size: int
    max_references: int
    manifests: StoredManifests = field(default_factory=StoredManifests)

    def writable_sessions(self) -> UploadSessions:
        """The upload sessions, or UNSUPPORTED when this registry does not take pushes."""
        if self.read_only or self.sessions is None:
            raise RegistryError("UNSUPPORTED", message="this registry is read-only")
        return self.sessions

    def require_writable(self) -> None:
        if self.read_only:
            raise RegistryError("UNSUPPORTED", message="this registry is read-only")


def absolute_url(request: web.Request, path: str) -> str:
    """An absolute URL on the host the client used: every client follows absolute
    ``Location`` headers, and some mishandle relative ones behind a mirror prefix."""
    return f"{request.scheme}://{request.host}{quote(path, safe='/:@')}"
