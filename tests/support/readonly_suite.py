"""The read parts of the backend conformance suite, for read-only backends (http,
registry_blob): objects are put in the upstream by the test (``seed``), never through the
backend, and every write must fail with :class:`ReadOnlyBackend` instead.

A test module subclasses :class:`ReadOnlySuite` in a class named ``Test...`` and provides
two fixtures: ``backend_config`` (``() -> BackendConfig``) and ``seed``, a callable
``(namespace, data) -> name`` that stores ``data`` upstream and returns the name the backend
reads it under (a digest's hex). Backends are built through ``create_backend``, as the
components build them.
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kraken.backend import Backend, BackendConfig, BackendNotFound, ReadOnlyBackend, create_backend
from kraken.core.digest import Digest
from tests.support.backend_suite import sha256_file

NS = "test/ro"
Seed = Callable[[str, bytes], str]


class ReadOnlySuite:
    @pytest.fixture
    def out_dir(self, tmp_path: Path) -> Path:
        """An empty directory of its own (the upstream may keep files in ``tmp_path``)."""
        path = tmp_path / "suite-out"
        path.mkdir()
        return path

    @pytest.fixture
    async def backend(self, backend_config: Callable[[], BackendConfig]) -> AsyncIterator[Backend]:
        backend = create_backend(backend_config())
        yield backend
        await backend.close()

    async def test_is_read_only(self, backend: Backend) -> None:
        assert backend.read_only

    async def test_stat_missing_returns_none(self, backend: Backend) -> None:
        assert await backend.stat(NS, "ab" * 32) is None

    async def test_stat_reports_size(self, backend: Backend, seed: Seed) -> None:
        name = seed(NS, os.urandom(12345))
        info = await backend.stat(NS, name)
        assert info is not None and info.size == 12345

    async def test_download_writes_identical_bytes(self, backend: Backend, seed: Seed, out_dir: Path) -> None:
        data = os.urandom(3 << 20)
        name = seed(NS, data)
        await backend.download(NS, name, out_dir / "out")
        assert sha256_file(out_dir / "out") == Digest.of_bytes(data).hex
        assert sorted(p.name for p in out_dir.iterdir()) == ["out"]  # no temp file left

    async def test_download_bytes(self, backend: Backend, seed: Seed) -> None:
        data = os.urandom(1000)
        assert await backend.download_bytes(NS, seed(NS, data)) == data

    async def test_download_missing_raises_and_writes_nothing(self, backend: Backend, out_dir: Path) -> None:
        with pytest.raises(BackendNotFound):
            await backend.download(NS, "cd" * 32, out_dir / "out")
        with pytest.raises(BackendNotFound):
            await backend.download_bytes(NS, "cd" * 32)
        assert list(out_dir.iterdir()) == []

    async def test_holds_reads_the_object_back(self, backend: Backend, seed: Seed, out_dir: Path) -> None:
        data = os.urandom(5000)
        digest = Digest.of_bytes(data)
        assert not await backend.holds(NS, Digest.of_bytes(b"other"), out_dir)
        assert seed(NS, data) == digest.hex
        assert await backend.holds(NS, digest, out_dir)
        assert list(out_dir.iterdir()) == []

    async def test_writes_are_refused(self, backend: Backend, out_dir: Path) -> None:
        src = out_dir / "src"
        src.write_bytes(b"x")
        with pytest.raises(ReadOnlyBackend, match=f"namespace '{NS}'.*read-only"):
            await backend.upload(NS, "ef" * 32, src)
        with pytest.raises(ReadOnlyBackend, match="read-only"):
            await backend.upload_bytes(NS, "ef" * 32, b"x")

    async def test_list_is_empty(self, backend: Backend, seed: Seed) -> None:
        seed(NS, b"listed?")
        assert await backend.list("") == []
