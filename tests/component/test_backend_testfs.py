"""The testfs backend: the conformance suite against a real testfs server, plus failures."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kraken.backend import (
    BackendConfig,
    BackendError,
    FileBackendConfig,
    TestfsBackend,
    TestfsBackendConfig,
    create_backend,
)
from kraken.devcluster import free_port
from kraken.http.config import HttpClientConfig
from kraken.testfs.config import TestfsConfig
from kraken.testfs.server import create_testfs_app
from tests.support.backend_suite import BackendSuite, ConfigFactory, digest_hex
from tests.support.waiting import wait_healthy

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_RETRY = HttpClientConfig(connect_timeout=2, read_timeout=5, retries=0)


async def start_testfs(root: Path) -> TestServer:
    server = TestServer(create_testfs_app(TestfsConfig(root=str(root))), host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def testfs_addr(tmp_path: Path) -> AsyncIterator[str]:
    server = await start_testfs(tmp_path / "testfs")
    yield f"127.0.0.1:{server.port}"
    await server.close()


class TestTestfsBackend(BackendSuite):
    @pytest.fixture
    def backend_config(self, testfs_addr: str) -> ConfigFactory:
        def make(root: str, name_path: str) -> BackendConfig:
            return BackendConfig("testfs", TestfsBackendConfig(addr=testfs_addr, root=root, name_path=name_path))

        return make


async def test_file_backend_reads_what_testfs_wrote(tmp_path: Path) -> None:
    """Both lay objects out the same way, so a testfs root can be served as a file backend."""
    server = await start_testfs(tmp_path / "shared")
    via_http = create_backend(BackendConfig("testfs", TestfsBackendConfig(
        addr=f"127.0.0.1:{server.port}", root="blobs", name_path="sharded_docker_blob")))
    via_disk = create_backend(BackendConfig("file", FileBackendConfig(
        root=str(tmp_path / "shared" / "blobs"), name_path="sharded_docker_blob")))
    try:
        hexd = digest_hex(b"shared blob")
        await via_http.upload_bytes("ns", hexd, b"shared blob")
        assert await via_disk.download_bytes("ns", hexd) == b"shared blob"
        assert await via_disk.list("") == [hexd]
    finally:
        await via_http.close()
        await via_disk.close()
        await server.close()


async def test_backend_against_testfs_subprocess(tmp_path: Path) -> None:
    """``python -m kraken testfs --port N --root DIR`` serves the backend; files land under DIR."""
    root, log = tmp_path / "root", tmp_path / "testfs.log"
    port = free_port()
    with open(log, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kraken", "testfs", "--port", str(port), "--host", "127.0.0.1",
            "--root", str(root),
            cwd=REPO_ROOT, stdout=log_file, stderr=log_file,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    backend = None
    try:
        await wait_healthy(f"http://127.0.0.1:{port}/health", 20, details=log.read_text,
                           alive=lambda: None if proc.returncode is None else f"testfs exited with {proc.returncode}")
        backend = TestfsBackend(TestfsBackendConfig(
            addr=f"127.0.0.1:{port}", root="blobs", name_path="sharded_docker_blob"), HttpClientConfig())
        data = os.urandom(5 << 20)
        hexd = digest_hex(data)
        src = tmp_path / "src"
        src.write_bytes(data)
        await backend.upload("ns", hexd, src)
        on_disk = root / "blobs/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
        assert on_disk.read_bytes() == data
        await backend.download("ns", hexd, tmp_path / "dst")
        assert (tmp_path / "dst").read_bytes() == data
        assert await backend.list(hexd[:2]) == [hexd]
    finally:
        if backend is not None:
            await backend.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), timeout=20)
    assert rc == 0, log.read_text()
    assert "listening" in log.read_text()


async def test_unreachable_testfs_is_backend_error(tmp_path: Path) -> None:
    backend = TestfsBackend(TestfsBackendConfig(addr=f"127.0.0.1:{free_port()}"), NO_RETRY)
    try:
        with pytest.raises(BackendError):
            await backend.stat("ns", "blob")
        with pytest.raises(BackendError):
            await backend.upload_bytes("ns", "blob", b"x")
        (tmp_path / "src").write_bytes(b"x")
        with pytest.raises(BackendError):
            await backend.upload("ns", "blob", tmp_path / "src")
        with pytest.raises(BackendError):
            await backend.download("ns", "blob", tmp_path / "dst")
        with pytest.raises(BackendError):
            await backend.list("")
        assert not (tmp_path / "dst").exists()
    finally:
        await backend.close()


async def test_server_error_is_backend_error(tmp_path: Path) -> None:
    async def fail(_: web.Request) -> web.Response:
        return web.Response(status=500, text="disk on fire")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    backend = TestfsBackend(TestfsBackendConfig(addr=f"127.0.0.1:{server.port}"), NO_RETRY)
    try:
        with pytest.raises(BackendError, match="disk on fire"):
            await backend.download_bytes("ns", "blob")
        with pytest.raises(BackendError):
            await backend.upload_bytes("ns", "blob", b"x")
    finally:
        await backend.close()
        await server.close()


async def test_truncated_download_leaves_no_destination(tmp_path: Path) -> None:
    """A body cut short is a BackendError and the destination is never created."""

    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(truncate, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = TestfsBackend(TestfsBackendConfig(addr=f"127.0.0.1:{port}"), NO_RETRY)
    try:
        with pytest.raises(BackendError):
            await backend.download("ns", "blob", tmp_path / "dst")
        assert os.listdir(tmp_path) == []
    finally:
        await backend.close()
        server.close()
        await server.wait_closed()
