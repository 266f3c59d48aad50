"""A small local-disk RegistryStorage for protocol tests (a test double of the proxy's
origin-backed storage, named as such: the proxy's own tests use the real processes)."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import BinaryIO

from kraken.core.digest import Digest
from kraken.registry.ranges import ByteRange
from kraken.registry.storage import BlobReader, BlobWriter, FileBlobReader, RegistryStorage


class LocalWriter(BlobWriter):
    """Streams an upload into a temp file; fails on purpose after ``fails_after`` bytes."""

    def __init__(self, storage: LocalStorage, repo: str, path: Path, fails_after: int | None) -> None:
        self.storage, self.repo, self.path, self.fails_after = storage, repo, path, fails_after
        self.received = 0
        self.state = "open"

    async def write(self, chunk: bytes) -> None:
        if self.fails_after is not None and self.fails_after >= 0 and self.received + len(chunk) > self.fails_after:
            raise ConnectionError("writer failing on purpose")
        with open(self.path, "ab") as f:
            f.write(chunk)
        self.received += len(chunk)

    async def commit(self, digest: Digest) -> bool:
        self.path.replace(self.storage.root / digest.hex)
        self.storage.members.setdefault(self.repo, set()).add(digest)
        self.state = "committed"
        return True

    async def abort(self) -> None:
        self.path.unlink(missing_ok=True)
        self.state = "aborted"


class LocalStorage(RegistryStorage):
    """Blobs as files named by digest, with per-repository membership; tags in a dict.

    ``writer_fails_after``: None offers no streaming writer; -1 a writer that never fails;
    N a writer that fails once it would pass N bytes.
    """

    def __init__(self, root: Path, writer_fails_after: int | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.members: dict[str, set[Digest]] = {}
        self.tags: dict[tuple[str, str], Digest] = {}
        self.fail_with: Exception | None = None
        self.stream_writers = writer_fails_after is not None
        self.writer_fails_after = writer_fails_after
        self.writers: list[LocalWriter] = []
        self.whole_file_puts = 0

    def _path(self, digest: Digest) -> Path:
        return self.root / digest.hex

    def has(self, digest: Digest) -> bool:
        return self._path(digest).exists()

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        return self.tags.get((repo, tag))

    async def list_tags(self, repo: str) -> list[str]:
        return sorted(t for r, t in self.tags if r == repo)

    async def catalog(self) -> list[str]:
        return sorted({r for r, _ in self.tags})

    async def stat_blob(self, repo: str, digest: Digest) -> int | None:
        if self.fail_with is not None:
            raise self.fail_with
        if digest not in self.members.get(repo, set()):
            return None
        return self._path(digest).stat().st_size

    async def open_blob(self, repo: str, digest: Digest, byte_range: ByteRange | None) -> BlobReader | None:
        if digest not in self.members.get(repo, set()):
            return None
        return FileBlobReader(self._path(digest), byte_range, chunk_size=4096)

    async def open_manifest(self, repo: str, digest: Digest, max_size: int) -> BinaryIO | None:
        if digest not in self.members.get(repo, set()) or self._path(digest).stat().st_size > max_size:
            return None
        return open(self._path(digest), "rb")

    async def put_blob_from_file(self, repo: str, digest: Digest, path: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, path, self._path(digest))
        self.members.setdefault(repo, set()).add(digest)
        self.whole_file_puts += 1

    async def start_blob_writer(self, repo: str) -> BlobWriter | None:
        if not self.stream_writers:
            return None
        writer = LocalWriter(self, repo, self.root / f".stream-{len(self.writers)}", self.writer_fails_after)
        self.writers.append(writer)
        return writer

    async def put_blob_bytes(self, repo: str, digest: Digest, data: bytes) -> None:
        self._path(digest).write_bytes(data)
        self.members.setdefault(repo, set()).add(digest)

    async def put_tag(self, repo: str, tag: str, digest: Digest) -> None:
        self.tags[(repo, tag)] = digest

    async def mount_blob(self, from_repo: str, to_repo: str, digest: Digest) -> bool:
        if digest not in self.members.get(from_repo, set()):
            return False
        self.members.setdefault(to_repo, set()).add(digest)
        return True
