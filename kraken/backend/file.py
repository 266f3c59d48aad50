"""The ``file`` backend: objects in a local directory, laid out exactly like a testfs root.

Useful for single-host deployments and tests without a testfs process. All file I/O runs in
worker threads; every write is atomic (temp file + rename), so a concurrent reader sees the
old object or the new one, never a mix.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from kraken.backend.base import Backend, BackendError, BackendNotFound, BlobInfo, InvalidName
from kraken.backend.filetree import FileTree, UnsafePath, atomic_copy, atomic_write_bytes
from kraken.backend.namepath import NamePathKind, ObjectLayout

# Opening an object fails with these when it does not exist (or a directory has its name).
_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


@dataclass
class FileBackendConfig:
    """A local directory, laid out exactly like a testfs root."""

    root: str
    name_path: NamePathKind = "identity"


class FileBackend(Backend):
    """Objects under ``config.root``; the namespace is not part of the path (routing picks the root)."""

    def __init__(self, config: FileBackendConfig) -> None:
        self.layout = ObjectLayout("", config.name_path)
        self.tree = FileTree(config.root)
        self.tree.root.mkdir(parents=True, exist_ok=True)

    def _resolve(self, name: str) -> Path:
        try:
            return self.tree.resolve(self.layout.path(name))
        except UnsafePath as e:
            raise InvalidName(str(e)) from None

    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        path = self._resolve(name)
        try:
            st = await asyncio.to_thread(path.stat)
        except _MISSING:
            return None
        return BlobInfo(st.st_size) if S_ISREG(st.st_mode) else None

    async def upload(self, namespace: str, name: str, src: Path) -> None:
        await asyncio.to_thread(self._upload, src, self._resolve(name))

    def _upload(self, src: Path, dst: Path) -> None:
        with open(src, "rb") as f:  # a missing src is the caller's error, raised as is
            try:
                atomic_copy(f, dst, self.tree.tmp_dir)
            except OSError as e:
                raise BackendError(f"writing {dst}: {e}") from e

    async def upload_bytes(self, namespace: str, name: str, data: bytes) -> None:
        dst = self._resolve(name)
        try:
            await asyncio.to_thread(atomic_write_bytes, data, dst, self.tree.tmp_dir)
        except OSError as e:
            raise BackendError(f"writing {dst}: {e}") from e

    async def download(self, namespace: str, name: str, dst: Path) -> None:
        if not await asyncio.to_thread(_copy_out, self._resolve(name), dst):
            raise BackendNotFound(f"{name}: not found in {self.tree.root}")

    async def download_bytes(self, namespace: str, name: str) -> bytes:
        try:
            return await asyncio.to_thread(self._resolve(name).read_bytes)
        except _MISSING as e:
            raise BackendNotFound(f"{name}: not found in {self.tree.root}") from e

    async def list(self, prefix: str) -> list[str]:
        directory = self.layout.list_dir(prefix)
        if directory is None:
            return []
        try:
            paths = await asyncio.to_thread(self.tree.files_under, directory)
        except UnsafePath:
            return []
        return self.layout.names(paths, prefix)

    async def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""


def _copy_out(src: Path, dst: Path) -> bool:
    """Copy object ``src`` over ``dst`` atomically; False if the object does not exist."""
    try:
        f = open(src, "rb")  # noqa: SIM115 - only a missing object means False, not a missing dst
    except _MISSING:
        return False
    with f:
        atomic_copy(f, dst, dst.parent)
    return True
