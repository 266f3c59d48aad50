"""A directory of files addressed by untrusted relative paths, written atomically.

This is the storage of the testfs server and of the ``file`` backend (so a testfs root can be
read as a file backend and the other way round). It guarantees:

- a path never resolves outside the root: absolute paths, ``..`` and symlinks that lead out
  are refused with :class:`UnsafePath` (``:`` counts as ``/``, as in testfs);
- a reader never sees a partial file: data goes to a temp file under ``.kraken-tmp/`` in the
  root (same filesystem), is fsynced, then renamed over the target;
- large data is never held in memory and never written on the event loop: streams are
  buffered up to :data:`WRITE_BATCH` bytes and written in a worker thread.

Path checks touch only metadata (a few ``lstat`` calls) and run inline; everything that moves
file contents runs in a thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from kraken.core.names import InvalidName, check_path_lengths

WRITE_BATCH = 1 << 20
READ_CHUNK = 1 << 20
TMP_DIR = ".kraken-tmp"


class UnsafePath(ValueError):
    """A path that is empty, absolute, contains ``..``, leads outside the root, or is longer
    than a file system takes (a clear refusal instead of ENAMETOOLONG surfacing as a 500)."""


class _TempFile:
    """A uniquely named file in ``tmp_dir`` (same filesystem as its destination, so the final
    rename is atomic); every method blocks and runs in a worker thread.

    It wraps an unbuffered ``FileIO`` rather than a bare descriptor, so a close racing a late
    write fails cleanly instead of writing into a descriptor number the OS has reused.
    """

    def __init__(self, tmp_dir: Path, name: str) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, self.path = tempfile.mkstemp(dir=tmp_dir, prefix=f".{name[:64]}.", suffix=".tmp")
        self.file = io.FileIO(fd, "wb")

    def write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view:
            view = view[self.file.write(view):]

    def commit(self, dst: Path) -> None:
        """fsync, close and rename over ``dst``; on failure the caller calls :meth:`discard`."""
        os.fsync(self.file.fileno())
        self.file.close()
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, dst)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class AtomicWriter:
    """Streams bytes into a temp file that replaces ``dst`` only when the block succeeds.

    ::

        async with AtomicWriter(dst, tmp_dir) as w:
            async for chunk in stream:
                await w.write(chunk)

    An exception or cancellation inside the block (or a failed rename) removes the temp file;
    ``dst`` is either untouched or complete.
    """

    def __init__(self, dst: Path, tmp_dir: Path) -> None:
        self.dst = dst
        self.tmp_dir = tmp_dir
        self.size = 0
        self._buf = bytearray()
        self._tmp: _TempFile | None = None
        self._pending: asyncio.Future[None] | None = None

    async def _in_thread(self, fn: Callable[..., None], *args: object) -> None:
        """Run ``fn`` in a thread; if we are cancelled meanwhile, the thread still finishes and
        ``_pending`` lets the cleanup wait for it before touching the file."""
        self._pending = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        await asyncio.shield(self._pending)

    async def __aenter__(self) -> AtomicWriter:
        self._tmp = await asyncio.to_thread(_TempFile, self.tmp_dir, self.dst.name)
        return self

    async def write(self, data: bytes) -> None:
        self._buf += data
        self.size += len(data)
        if len(self._buf) >= WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        if self._buf and self._tmp is not None:
            buf, self._buf = self._buf, bytearray()
            await self._in_thread(self._tmp.write, buf)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tmp is not None, "AtomicWriter used without async with"
        committed = False
        try:
            if exc_type is None:
                await self._flush()
                await self._in_thread(self._tmp.commit, self.dst)
                committed = True
        finally:
            if not committed:
                if self._pending is not None and not self._pending.done():
                    await asyncio.wait({self._pending})
                await asyncio.to_thread(self._tmp.discard)


def atomic_copy(src: BinaryIO, dst: Path, tmp_dir: Path) -> int:
    """Copy the open file ``src`` over ``dst`` atomically (blocking: call in a thread).

    Takes an open file so callers can tell "source missing" (their open failed) from a
    failure to write ``dst``. Returns the number of bytes copied.
    """
    tmp = _TempFile(tmp_dir, dst.name)
    size = 0
    try:
        while chunk := src.read(READ_CHUNK):
            tmp.write(chunk)
            size += len(chunk)
        tmp.commit(dst)
    except BaseException:
        tmp.discard()
        raise
    return size


def atomic_write_bytes(data: bytes, dst: Path, tmp_dir: Path) -> None:
    """Write ``data`` over ``dst`` atomically (blocking: call in a thread)."""
    tmp = _TempFile(tmp_dir, dst.name)
    try:
        tmp.write(data)
        tmp.commit(dst)
    except BaseException:
        tmp.discard()
        raise


class FileTree:
    """Files under ``root``, addressed by relative ``/``-separated paths (``:`` == ``/``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.tmp_dir = self.root / TMP_DIR

    def normalize(self, path: str, allow_root: bool = False) -> str:
        """The canonical relative form of ``path``; raises UnsafePath for anything unsafe."""
        if "\x00" in path:
            raise UnsafePath(f"path {path!r} contains a NUL byte")
        path = path.replace(":", "/")
        if path.startswith("/"):
            raise UnsafePath(f"path {path!r} is absolute")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UnsafePath(f"path {path!r} contains '..'")
        if parts and parts[0] == TMP_DIR:
            raise UnsafePath(f"path {path!r} is inside the reserved {TMP_DIR}/ directory")
        if not parts and not allow_root:
            raise UnsafePath("empty path")
        normalized = "/".join(parts)
        try:
            return check_path_lengths(normalized)
        except InvalidName as e:
            raise UnsafePath(str(e)) from None

    def resolve(self, path: str, allow_root: bool = False) -> Path:
        """The file system path of ``path``, guaranteed to lie inside the root.

        Symlinks are followed for the check, so a link inside the root pointing out of it is
        refused; the returned path keeps the caller's spelling (a rename over it replaces the
        link itself, never its target).
        """
        rel = self.normalize(path, allow_root)
        target = self.root / rel if rel else self.root
        try:
            real = target.resolve()
        except (RuntimeError, OSError) as e:  # a symlink loop, a component we may not read
            raise UnsafePath(f"path {path!r} cannot be resolved: {e}") from None
        if not real.is_relative_to(self.root):
            raise UnsafePath(f"path {path!r} leads outside the root")
        return target

    def files_under(self, prefix: str) -> list[str]:
        """Sorted paths (relative to the root) of the regular files under directory ``prefix``.

        ``prefix`` naming a file lists that file; a missing prefix lists nothing. Blocking:
        call in a thread.
        """
        start = self.resolve(prefix, allow_root=True)
        if start.is_symlink() or not start.exists():
            return []
        if start.is_file():
            return [self.normalize(prefix)]
        found: list[str] = []
        self._walk(start, found)
        return sorted(found)

    def _walk(self, directory: Path, found: list[str]) -> None:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if Path(entry.path) != self.tmp_dir:
                    self._walk(Path(entry.path), found)
            elif entry.is_file(follow_symlinks=False):
                found.append(Path(entry.path).relative_to(self.root).as_posix())

    def writer(self, path: str) -> AtomicWriter:
        return AtomicWriter(self.resolve(path), self.tmp_dir)

    def clear_tmp(self) -> None:
        """Remove temp files left by a crash (blocking: call at start-up, before serving)."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

