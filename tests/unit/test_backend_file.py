"""The file backend: the conformance suite plus what is specific to local directories."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kraken.backend import BackendConfig, FileBackendConfig, InvalidName, create_backend
from tests.support.backend_suite import BackendSuite, ConfigFactory


class TestFileBackend(BackendSuite):
    @pytest.fixture
    def backend_config(self, tmp_path: Path) -> ConfigFactory:
        def make(root: str, name_path: str) -> BackendConfig:
            return BackendConfig("file", FileBackendConfig(root=str(tmp_path / "store" / root), name_path=name_path))

        return make


async def test_writes_leave_no_temp_files(tmp_path: Path) -> None:
    backend = create_backend(BackendConfig("file", FileBackendConfig(root=str(tmp_path), name_path="docker_tag")))
    src = tmp_path.parent / f"{tmp_path.name}-src"
    src.write_bytes(b"manifest digest")
    await backend.upload("test/x", "test/x:v1", src)
    await backend.upload_bytes("test/x", "test/x:v1", b"again")
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["docker/registry/v2/repositories/test/x/_manifests/tags/v1/current/link"]
    await backend.close()


async def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    os.symlink(outside, root / "link")
    backend = create_backend(BackendConfig("file", FileBackendConfig(root=str(root))))
    with pytest.raises(InvalidName):
        await backend.download_bytes("ns", "link/secret")
    with pytest.raises(InvalidName):
        await backend.upload_bytes("ns", "link/planted", b"x")
    assert os.listdir(outside) == ["secret"]
    await backend.close()
