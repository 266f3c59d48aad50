"""The read-only ``http`` backend against a real HTTP file server (aiohttp, in the test)."""
from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kraken.backend import BackendConfig, BackendError, BackendNotFound, create_backend
from kraken.backend.http import BackoffConfig, HttpBackendConfig
from kraken.config import ConfigError, build
from kraken.http.config import HttpClientConfig
from tests.support.readonly_suite import ReadOnlySuite


class FileServer:
    """Files of a directory at ``/blobs/<name>``; ``fail`` answers that many 503s first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fail = 0
        self.requests: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.method)
        if self.fail:
            self.fail -= 1
            return web.Response(status=503, text="busy")
        path = self.root / request.match_info["name"]
        if not path.is_file():
            return web.Response(status=404)
        return web.FileResponse(path)


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[tuple[FileServer, str]]:
    server = FileServer(tmp_path / "files")
    server.root.mkdir()
    app = web.Application()
    app.router.add_get("/blobs/{name}", server.handle)
    http = TestServer(app, host="127.0.0.1")
    await http.start_server()
    yield server, f"127.0.0.1:{http.port}"
    await http.close()


def _url(addr: str) -> str:
    return "http" + f"://{addr}/blobs/%s"


class TestHttpBackend(ReadOnlySuite):
    @pytest.fixture
    def backend_config(self, files: tuple[FileServer, str]) -> Callable[[], BackendConfig]:
        return lambda: BackendConfig("http", HttpBackendConfig(download_url=_url(files[1])))

    @pytest.fixture
    def seed(self, files: tuple[FileServer, str]) -> Callable[[str, bytes], str]:
        def put(namespace: str, data: bytes) -> str:
            name = hashlib.sha256(data).hexdigest()
            (files[0].root / name).write_bytes(data)
            return name

        return put


async def test_stat_is_a_head(files: tuple[FileServer, str]) -> None:
    server, addr = files
    (server.root / "x").write_bytes(b"abc")
    backend = create_backend(BackendConfig("http", HttpBackendConfig(download_url=_url(addr))))
    try:
        info = await backend.stat("ns", "x")
        assert info is not None and info.size == 3 and server.requests == ["HEAD"]
    finally:
        await backend.close()


async def test_download_backoff_retries_5xx(files: tuple[FileServer, str], tmp_path: Path) -> None:
    server, addr = files
    (server.root / "x").write_bytes(b"abc")
    fast = BackoffConfig(enabled=True, initial_interval=0.01, max_interval=0.05, max_retries=3)
    config = BackendConfig("http", HttpBackendConfig(download_url=_url(addr), download_backoff=fast))
    backend = create_backend(config, http_client=HttpClientConfig(retries=0))
    try:
        server.fail = 2
        assert await backend.download_bytes("ns", "x") == b"abc"
        server.fail = 5
        with pytest.raises(BackendError, match="503"):
            await backend.download("ns", "x", tmp_path / "out")
        assert not (tmp_path / "out").exists()
        with pytest.raises(BackendNotFound):
            await backend.download_bytes("ns", "missing")
    finally:
        await backend.close()


async def test_without_backoff_a_5xx_fails_at_once(files: tuple[FileServer, str]) -> None:
    server, addr = files
    (server.root / "x").write_bytes(b"abc")
    backend = create_backend(BackendConfig("http", HttpBackendConfig(download_url=_url(addr))),
                             http_client=HttpClientConfig(retries=0))
    try:
        server.fail = 1
        with pytest.raises(BackendError, match="http .*namespace 'ns'.*503"):
            await backend.download_bytes("ns", "x")
        assert server.requests == ["GET"]
    finally:
        await backend.close()


def test_config_in_krakens_shape() -> None:
    config = build(HttpBackendConfig, {
        "download_url": "https://files.example.com/blobs/%s", "upload_url": "https://files.example.com/up/%s",
        "download_timeout": "30s", "download_backoff": {"enabled": True, "initial_interval": "1s", "max_retries": 2},
    })
    assert config.download_timeout == 30 and config.download_backoff.max_retries == 2
    for bad in ("https://x/blobs", "https://x/%s/%s", "https://x/%d/%s"):
        with pytest.raises(ConfigError, match="exactly one %s"):
            build(HttpBackendConfig, {"download_url": bad})
