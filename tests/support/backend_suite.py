"""The conformance suite every storage backend must pass.

A test module subclasses :class:`BackendSuite` in a class named ``Test...`` and provides one
fixture, ``backend_config``: a callable ``(root, name_path) -> BackendConfig``. Two calls with
the same ``root`` must address the same storage (so one backend can check another's layout);
different roots must not see each other's objects. Every backend is built through
``create_backend`` / ``build_router``, exactly as the components build them.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kraken.backend import (
    Backend,
    BackendConfig,
    BackendError,
    BackendNotFound,
    InvalidName,
    NamespaceBackendConfig,
    build_router,
    create_backend,
)
from kraken.core.digest import Digest

ConfigFactory = Callable[[str, str], BackendConfig]
BackendFactory = Callable[..., Backend]

NS = "test/x"
LARGE = 24 << 20


def digest_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes in chunks; returns their sha256 hex."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


class BackendSuite:
    """Behaviour every :class:`~kraken.backend.Backend` must show, whatever stores the bytes."""

    @pytest.fixture
    async def make_backend(self, backend_config: ConfigFactory) -> AsyncIterator[BackendFactory]:
        created: list[Backend] = []

        def make(name_path: str = "identity", root: str = "objects") -> Backend:
            backend = create_backend(backend_config(root, name_path))
            created.append(backend)
            return backend

        yield make
        for backend in created:
            await backend.close()

    @pytest.fixture
    async def backend(self, make_backend: BackendFactory) -> Backend:
        """An identity-layout backend (async: backends are built inside the running loop)."""
        return make_backend("identity")

    # ---- stat / upload / download ------------------------------------------------------

    @pytest.mark.parametrize(
        "name_path,name",
        [("identity", "missing"), ("sharded_docker_blob", "ab" * 32), ("docker_tag", "test/x:missing")],
    )
    async def test_stat_missing_returns_none(self, make_backend: BackendFactory, name_path: str, name: str) -> None:
        assert await make_backend(name_path).stat(NS, name) is None

    async def test_upload_file_then_stat_reports_size(self, backend: Backend, tmp_path: Path) -> None:
        src = tmp_path / "src"
        src.write_bytes(b"x" * 12345)
        await backend.upload(NS, "blob", src)
        info = await backend.stat(NS, "blob")
        assert info is not None and info.size == 12345

    async def test_holds_reads_the_object_back(self, make_backend: BackendFactory, tmp_path: Path) -> None:
        """Only an object whose content hashes to the digest counts; same size is not enough."""
        backend = make_backend("sharded_docker_blob")
        data = os.urandom(100_000)
        digest = Digest.of_bytes(data)
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        assert not await backend.holds(NS, digest, scratch)
        await backend.upload_bytes(NS, digest.hex, bytes(len(data)))
        assert not await backend.holds(NS, digest, scratch)
        await backend.upload_bytes(NS, digest.hex, data)
        assert await backend.holds(NS, digest, scratch)
        assert list(scratch.iterdir()) == []  # the read-back copy is gone

    async def test_download_hashed_is_the_digest_of_the_file(self, backend: Backend, tmp_path: Path) -> None:
        """Whether a kind hashes while it writes or after, the digest is of the bytes in ``dst``."""
        data = os.urandom(3_000_000)
        await backend.upload_bytes(NS, "blob", data)
        dst = tmp_path / "out"
        for algorithm in ("sha256", "sha512"):
            digest = await backend.download_hashed(NS, "blob", dst, algorithm)
            assert dst.read_bytes() == data
            assert digest == Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
        with pytest.raises(BackendNotFound):
            await backend.download_hashed(NS, "absent", tmp_path / "absent")

    async def test_download_writes_identical_bytes(self, backend: Backend, tmp_path: Path) -> None:
        data = os.urandom(300_000)
        src = tmp_path / "src"
        src.write_bytes(data)
        await backend.upload(NS, "blob", src)
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        await backend.download(NS, "blob", out_dir / "dst")
        assert (out_dir / "dst").read_bytes() == data
        assert os.listdir(out_dir) == ["dst"], "download left temp files beside the destination"

    async def test_download_replaces_existing_destination(self, backend: Backend, tmp_path: Path) -> None:
        await backend.upload_bytes(NS, "blob", b"new contents")
        dst = tmp_path / "dst"
        dst.write_bytes(b"old contents that are longer")
        await backend.download(NS, "blob", dst)
        assert dst.read_bytes() == b"new contents"

    async def test_download_missing_raises_not_found(self, backend: Backend, tmp_path: Path) -> None:
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        with pytest.raises(BackendNotFound):
            await backend.download(NS, "missing", out_dir / "dst")
        assert os.listdir(out_dir) == [], "a failed download must leave nothing behind"
        with pytest.raises(BackendNotFound):
            await backend.download_bytes(NS, "missing")

    async def test_upload_bytes_download_bytes(self, backend: Backend) -> None:
        await backend.upload_bytes(NS, "small", b"hello backend")
        assert await backend.download_bytes(NS, "small") == b"hello backend"
        info = await backend.stat(NS, "small")
        assert info is not None and info.size == len(b"hello backend")

    async def test_empty_object(self, backend: Backend, tmp_path: Path) -> None:
        await backend.upload_bytes(NS, "empty", b"")
        info = await backend.stat(NS, "empty")
        assert info is not None and info.size == 0
        await backend.download(NS, "empty", tmp_path / "dst")
        assert (tmp_path / "dst").read_bytes() == b""

    async def test_overwrite_replaces_content(self, backend: Backend, tmp_path: Path) -> None:
        await backend.upload_bytes(NS, "tag", b"first version, quite long")
        src = tmp_path / "src"
        src.write_bytes(b"second")
        await backend.upload(NS, "tag", src)
        assert await backend.download_bytes(NS, "tag") == b"second"
        info = await backend.stat(NS, "tag")
        assert info is not None and info.size == len(b"second")

    async def test_concurrent_writers_leave_one_whole_version(self, backend: Backend) -> None:
        versions = [bytes([i]) * (256 << 10) for i in range(4)]
        await asyncio.gather(*(backend.upload_bytes(NS, "contended", v) for v in versions))
        assert await backend.download_bytes(NS, "contended") in versions

    async def test_names_with_slashes(self, backend: Backend, tmp_path: Path) -> None:
        await backend.upload_bytes(NS, "dir/sub/blob", b"nested")
        await backend.upload_bytes(NS, "dir/other", b"sibling")
        assert await backend.download_bytes(NS, "dir/sub/blob") == b"nested"
        await backend.download(NS, "dir/other", tmp_path / "dst")
        assert (tmp_path / "dst").read_bytes() == b"sibling"
        assert await backend.stat(NS, "dir") is None, "a directory is not an object"

    async def test_large_file_is_streamed(self, backend: Backend, tmp_path: Path) -> None:
        src = tmp_path / "big"
        expected = write_random_file(src, LARGE)
        tracemalloc.start()
        try:
            await backend.upload(NS, "big", src)
            await backend.download(NS, "big", tmp_path / "big.out")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert sha256_file(tmp_path / "big.out") == expected
        info = await backend.stat(NS, "big")
        assert info is not None and info.size == LARGE
        assert peak < LARGE // 3, f"moving {LARGE} bytes peaked at {peak} bytes of Python memory"

    # ---- layouts -----------------------------------------------------------------------

    async def test_sharded_docker_blob_layout(self, make_backend: BackendFactory) -> None:
        data = b"layer bytes"
        hexd = digest_hex(data)
        await make_backend("sharded_docker_blob").upload_bytes(NS, hexd, data)
        raw = make_backend("identity")
        assert await raw.download_bytes(NS, f"docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data") == data

    async def test_docker_tag_layout(self, make_backend: BackendFactory) -> None:
        await make_backend("docker_tag").upload_bytes(NS, "test/x:v1", b"sha256:abc")
        raw = make_backend("identity")
        path = "docker/registry/v2/repositories/test/x/_manifests/tags/v1/current/link"
        assert await raw.download_bytes(NS, path) == b"sha256:abc"

    async def test_invalid_names_are_refused(self, make_backend: BackendFactory) -> None:
        cases = {
            "identity": ["", "../x", "a/../../x", "/abs", "a//b", "..:x", "nul\x00"],
            "sharded_docker_blob": ["", "a", "XYZ", "ab/cd", "../ab"],
            "docker_tag": ["notag", "repo:", ":tag", "repo:a/b", "../repo:v1", "re:po:v1"],
        }
        for name_path, names in cases.items():
            backend = make_backend(name_path)
            for name in names:
                with pytest.raises(InvalidName):
                    await backend.upload_bytes(NS, name, b"x")
                with pytest.raises(InvalidName):
                    await backend.stat(NS, name)

    # ---- list --------------------------------------------------------------------------

    async def test_list_identity(self, backend: Backend) -> None:
        for name in ["a/b/1", "a/b/2", "a/bc", "ab", "z"]:
            await backend.upload_bytes(NS, name, name.encode())
        assert await backend.list("") == ["a/b/1", "a/b/2", "a/bc", "ab", "z"]
        assert await backend.list("a") == ["a/b/1", "a/b/2", "a/bc", "ab"]
        assert await backend.list("a/b") == ["a/b/1", "a/b/2", "a/bc"]
        assert await backend.list("a/b/") == ["a/b/1", "a/b/2"]
        assert await backend.list("nothing") == []

    async def test_list_sharded_docker_blob(self, make_backend: BackendFactory) -> None:
        backend = make_backend("sharded_docker_blob")
        names = sorted(digest_hex(str(i).encode()) for i in range(6))
        for name in names:
            await backend.upload_bytes(NS, name, b"blob")
        assert await backend.list("") == names
        first = names[0]
        assert await backend.list(first[:1]) == [n for n in names if n.startswith(first[:1])]
        assert await backend.list(first[:3]) == [n for n in names if n.startswith(first[:3])]
        assert await backend.list(first) == [first]
        assert await backend.list("not-hex") == []

    async def test_list_docker_tag(self, make_backend: BackendFactory) -> None:
        backend = make_backend("docker_tag")
        for tag in ["test/x:v1", "test/x:v2", "test/xy:v1", "test/x/sub:latest", "other:latest"]:
            await backend.upload_bytes(NS, tag, b"sha256:" + tag.encode())
        assert await backend.list("test/x:") == ["test/x:v1", "test/x:v2"]
        assert await backend.list("test/x:v") == ["test/x:v1", "test/x:v2"]
        assert await backend.list("test/x") == ["test/x/sub:latest", "test/x:v1", "test/x:v2", "test/xy:v1"]
        assert await backend.list("test/") == ["test/x/sub:latest", "test/x:v1", "test/x:v2", "test/xy:v1"]
        assert await backend.list("") == [
            "other:latest", "test/x/sub:latest", "test/x:v1", "test/x:v2", "test/xy:v1",
        ]
        assert await backend.list("missing:") == []

    async def test_list_sees_only_its_own_layout_and_root(self, make_backend: BackendFactory) -> None:
        blobs = make_backend("sharded_docker_blob", root="shared")
        tags = make_backend("docker_tag", root="shared")
        elsewhere = make_backend("docker_tag", root="elsewhere")
        hexd = digest_hex(b"blob")
        await blobs.upload_bytes(NS, hexd, b"blob")
        await tags.upload_bytes(NS, "test/x:v1", hexd.encode())
        await elsewhere.upload_bytes(NS, "test/x:v2", hexd.encode())
        assert await blobs.list("") == [hexd]
        assert await tags.list("") == ["test/x:v1"]
        assert await elsewhere.list("") == ["test/x:v2"]

    # ---- routing -----------------------------------------------------------------------

    async def test_namespace_routing(self, backend_config: ConfigFactory) -> None:
        router = await build_router([
            NamespaceBackendConfig(namespace="test/special", backend=backend_config("special", "identity")),
            NamespaceBackendConfig(namespace="test/.*", backend=backend_config("team", "identity")),
            NamespaceBackendConfig(namespace="library/.*", backend=backend_config("library", "identity")),
        ])
        try:
            special = router.for_namespace("test/special")
            team = router.for_namespace("test/x")
            assert router.for_namespace("test/y") is team
            assert special is not team, "the first matching entry must win"
            assert router.backends == [special, team, router.for_namespace("library/alpine")]
            await team.upload_bytes("test/x", "blob", b"team data")
            assert await router.for_namespace("test/y").download_bytes("test/y", "blob") == b"team data"
            assert await special.stat("test/special", "blob") is None
            assert await router.for_namespace("library/alpine").stat("library/alpine", "blob") is None
            with pytest.raises(BackendError):
                router.for_namespace("nothing/matches")
            with pytest.raises(BackendError):  # the regex must match the whole namespace
                router.for_namespace("library")
        finally:
            await router.close()
