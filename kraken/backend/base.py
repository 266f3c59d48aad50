"""The storage-backend interface every origin and build-index talks to.

A backend stores named objects (blobs under their digest hex, tags under ``repo:tag``) in
some external store. Callers see only names; where an object lands inside the store is the
backend's business (see :mod:`kraken.backend.namepath`). Two exception types let callers tell
"the object is not there" (final: report 404) from "the store failed" (retry later, e.g. the
origin's write-back queue keeps the task).
"""
from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kraken.config import Secret
from kraken.core.digest import Digest, hash_file
from kraken.http.config import HttpClientConfig, TLSConfig

#: The namespace and names a readiness probe asks about (:meth:`Backend.ready`): a blob name
#: (64 hex digits no content hashes to in practice) and a tag name no tag can have (a tag part
#: never starts with "."), so each layout accepts one of them and no store ever holds either.
#: Largest object read into memory (``download_bytes``: a tag, a manifest; a tag list, a token
#: answer): a store or upstream must not be able to make a component hold whatever it sends.
MAX_IN_MEMORY = 16 << 20

READINESS_NAMESPACE = "kraken-readiness"
READINESS_NAMES = ("0" * 64, "kraken-readiness:.probe")

#: One credential set of the ``auth:`` section: field name -> secret
#: (e.g. ``{access_key_id: ..., secret_access_key: ...}``); Kraken's nested shape is flattened
#: to this before a backend sees it (:func:`kraken.backend.config.kind_credentials`).
Credentials = Mapping[str, Secret]


@dataclass(frozen=True)
class BlobInfo:
    """What a backend knows about a stored object."""

    size: int


@dataclass(frozen=True)
class BackendContext:
    """What a backend factory gets besides the backend's own config section.

    ``credentials`` holds this kind's credential sets from the ``auth:`` section (normally the
    ``--secrets`` file), by set name: ``auth: {s3: {team-a: {...}}}`` gives an s3 backend
    ``{"team-a": {...}}``. Kinds that need none ignore it. ``http_client`` and ``tls`` are the
    component's ``http_client:`` and ``tls:`` sections, for kinds that call a Kraken service
    (testfs).
    """

    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    http_client: HttpClientConfig = field(default_factory=HttpClientConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)


class BackendNotFound(Exception):
    """The backend does not hold an object with this name."""


class BackendError(Exception):
    """The backend is unreachable or failed; the same call may succeed later."""


class ReadOnlyBackend(BackendError):
    """A write to a backend that only reads (http, registry_blob, registry_tag): it never
    succeeds, however often it is retried, so callers must not queue one (the origin refuses
    pushes to such a namespace and queues no write-back for it)."""


class InvalidName(ValueError):
    """A name cannot be mapped to an object path (empty, ``..``, wrong shape for the layout).

    Raised before any I/O, identically by every backend, so a bad name is a caller bug that
    never reaches (or escapes) the store.
    """


class Backend(ABC):
    """One configured storage backend; created inside a running event loop, closed with close()."""

    #: The backend only reads (a pull-through of another registry, a download URL): uploads
    #: raise :class:`ReadOnlyBackend`, and the origin neither accepts pushes nor queues
    #: write-backs for a namespace routed to it. Not a ClassVar: a wrapper (the bandwidth
    #: limiter) copies its inner backend's value onto the instance.
    read_only: bool = False

    @abstractmethod
    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        """Size of the object, or None if it does not exist."""

    @abstractmethod
    async def upload(self, namespace: str, name: str, src: Path) -> None:
        """Store the contents of file ``src`` (streamed, never read whole into memory)."""

    @abstractmethod
    async def upload_bytes(self, namespace: str, name: str, data: bytes) -> None:
        """Store small in-memory data (tags, manifests)."""

    @abstractmethod
    async def download(self, namespace: str, name: str, dst: Path) -> None:
        """Write the object to ``dst`` atomically; raises :class:`BackendNotFound`."""

    @abstractmethod
    async def download_bytes(self, namespace: str, name: str) -> bytes:
        """Read a small object into memory; raises :class:`BackendNotFound`."""

    @abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Names (not paths) of stored objects whose name starts with ``prefix``, sorted."""

    async def download_hashed(self, namespace: str, name: str, dst: Path, algorithm: str = "sha256") -> Digest:
        """:meth:`download`, and the digest (``algorithm``) of exactly the bytes now in ``dst``.

        The caller verifies a blob with it before trusting the file (the origin's lazy fetch,
        :meth:`holds`). This default hashes the file once it is complete: a second pass over
        it. A kind that writes the object in order overrides it to hash the bytes as it writes
        them, so the check costs no pass of its own.
        """
        await self.download(namespace, name, dst)
        return await hash_file(dst, algorithm)

    async def holds(self, namespace: str, digest: Digest, tmp_dir: Path) -> bool:
        """Whether the object named ``digest.hex`` exists and its content hashes to ``digest``.

        Size alone proves nothing (a broken earlier write, a planted object), so the object is
        read back: downloaded to a temporary file in ``tmp_dir`` and hashed
        (:meth:`download_hashed`), never held in memory. Costs one full read of the object
        from the store.
        """
        tmp = tmp_dir / f"verify.{digest.hex}.{uuid.uuid4().hex}"
        try:
            return await self.download_hashed(namespace, digest.hex, tmp, digest.algorithm) == digest
        except BackendNotFound:
            return False
        finally:
            await asyncio.to_thread(tmp.unlink, True)

    async def ready(self) -> None:
        """Raise unless the store answers a cheap request now (the origin's ``/readiness`` asks
        the backends marked ``must_ready``). The default stats a name that is never stored: the
        answer "absent" proves the store is reachable (and, for stores with credentials, that
        they are accepted). A kind with a cheaper or more telling probe overrides this.
        """
        for name in READINESS_NAMES[:-1]:
            try:
                await self.stat(READINESS_NAMESPACE, name)
                return
            except InvalidName:
                continue  # this layout holds only the other shape of name
        await self.stat(READINESS_NAMESPACE, READINESS_NAMES[-1])

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the backend must not be used afterwards."""
