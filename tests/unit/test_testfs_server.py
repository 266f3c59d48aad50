"""The testfs HTTP API: files, Range, list, path-escape refusal, atomic streamed writes."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from kraken.backend.filetree import TMP_DIR
from kraken.testfs.config import TestfsConfig
from kraken.testfs.server import create_testfs_app
from tests.support.waiting import until


class Harness:
    """A running in-process testfs and a client that sends paths exactly as written."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession, root: Path) -> None:
        self.server = server
        self.session = session
        self.root = root

    def url(self, raw_path: str) -> URL:
        # encoded=True: no client-side normalisation of '..' or percent-escapes.
        return URL(f"http://127.0.0.1:{self.server.port}{raw_path}", encoded=True)

    def request(self, method: str, raw_path: str, **kwargs: Any) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return self.session.request(method, self.url(raw_path), **kwargs)

    async def put(self, path: str, data: bytes) -> None:
        async with self.request("POST", f"/files/{path}", data=data) as resp:
            assert resp.status == 201, await resp.text()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, bytes, dict]:
        async with self.request("GET", f"/files/{path}", **kwargs) as resp:
            return resp.status, await resp.read(), dict(resp.headers)


@pytest.fixture
async def testfs(tmp_path: Path) -> AsyncIterator[Harness]:
    root = tmp_path / "root"
    server = TestServer(create_testfs_app(TestfsConfig(root=str(root))), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Harness(server, session, root)
    await server.close()


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() or p.is_symlink())


async def test_health_and_readiness(testfs: Harness) -> None:
    for endpoint in ("/health", "/readiness"):
        async with testfs.request("GET", endpoint) as resp:
            assert resp.status == 200


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_store_then_head_and_get(testfs: Harness, method: str) -> None:
    data = os.urandom(70_000)
    async with testfs.request(method, "/files/dir/blob", data=data) as resp:
        assert resp.status == 201
        assert await resp.json() == {"size": len(data)}
    async with testfs.request("HEAD", "/files/dir/blob") as resp:
        assert resp.status == 200
        assert resp.headers["Size"] == str(len(data))
        assert resp.headers["Content-Length"] == str(len(data))
    status, body, _ = await testfs.get("dir/blob")
    assert (status, body) == (200, data)
    assert (testfs.root / "dir" / "blob").read_bytes() == data


async def test_overwrite(testfs: Harness) -> None:
    await testfs.put("blob", b"first, longer version")
    await testfs.put("blob", b"second")
    status, body, _ = await testfs.get("blob")
    assert (status, body) == (200, b"second")


async def test_missing_and_directories_are_404(testfs: Harness) -> None:
    await testfs.put("dir/blob", b"x")
    for path in ("missing", "dir", "dir/blob/below"):
        async with testfs.request("HEAD", f"/files/{path}") as resp:
            assert resp.status == 404, path
        status, _, _ = await testfs.get(path)
        assert status == 404, path


async def test_colon_maps_to_slash(testfs: Harness) -> None:
    await testfs.put("repo:tag", b"sha256:abc")
    assert (testfs.root / "repo" / "tag").read_bytes() == b"sha256:abc"
    status, body, _ = await testfs.get("repo/tag")
    assert (status, body) == (200, b"sha256:abc")
    async with testfs.request("GET", "/list/repo:") as resp:
        assert await resp.json() == ["repo/tag"]


async def test_range_requests(testfs: Harness) -> None:
    data = bytes(range(256)) * 40
    size = len(data)
    await testfs.put("blob", data)
    cases = {
        "bytes=10-19": (206, data[10:20], f"bytes 10-19/{size}"),
        "bytes=100-": (206, data[100:], f"bytes 100-{size - 1}/{size}"),
        "bytes=-16": (206, data[-16:], f"bytes {size - 16}-{size - 1}/{size}"),
        f"bytes=5-{size * 2}": (206, data[5:], f"bytes 5-{size - 1}/{size}"),
    }
    for header, (status, body, content_range) in cases.items():
        got_status, got_body, headers = await testfs.get("blob", headers={"Range": header})
        assert (got_status, got_body) == (status, body), header
        assert headers["Content-Range"] == content_range, header
    status, body, headers = await testfs.get("blob", headers={"Range": f"bytes={size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    status, body, _ = await testfs.get("blob", headers={"Range": "lines=1-2"})
    assert (status, body) == (200, data), "a malformed Range is ignored"


async def test_get_ignores_compressed_siblings(testfs: Harness) -> None:
    """A file named ``x.gz`` is another object, never a gzip encoding of ``x``."""
    await testfs.put("x", b"plain")
    await testfs.put("x.gz", b"other object")
    status, body, headers = await testfs.get("x", headers={"Accept-Encoding": "gzip"})
    assert (status, body) == (200, b"plain")
    assert "Content-Encoding" not in headers


ESCAPES = [
    "../x",
    "%2e%2e/x",
    "..%2Fx",
    "a/../../x",
    "/etc/x",  # /files//etc/x: absolute
    "%2Fetc%2Fx",
    "..:x",  # ':' becomes '/', so this is ../x
    "%00x",
    f"{TMP_DIR}/x",  # the temp area is not addressable
    "",
]


@pytest.mark.parametrize("path", ESCAPES)
async def test_path_escapes_are_refused(testfs: Harness, tmp_path: Path, path: str) -> None:
    before = files_under(tmp_path)
    async with testfs.request("POST", f"/files/{path}", data=b"planted") as resp:
        assert resp.status == 400, await resp.text()
        assert "error" in await resp.json()
    for method in ("GET", "HEAD"):
        async with testfs.request(method, f"/files/{path}") as resp:
            assert resp.status == 400, method
    if path:
        async with testfs.request("GET", f"/list/{path}") as resp:
            assert resp.status == 400
    assert files_under(tmp_path) == before, "nothing may be written anywhere"
    assert not Path("/etc/x").exists()


async def test_symlinks_out_of_the_root_are_refused(testfs: Harness, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    testfs.root.mkdir(exist_ok=True)
    os.symlink(outside, testfs.root / "dirlink")
    os.symlink(outside / "secret", testfs.root / "filelink")
    os.symlink("loop", testfs.root / "loop")
    for method, path in [("POST", "dirlink/planted"), ("GET", "dirlink/secret"), ("HEAD", "dirlink/secret"),
                         ("GET", "filelink"), ("POST", "filelink"), ("GET", "loop/x"), ("POST", "loop/x")]:
        async with testfs.request(method, f"/files/{path}", data=b"planted" if method == "POST" else None) as resp:
            assert resp.status == 400, (method, path)
    async with testfs.request("GET", "/list/dirlink") as resp:
        assert resp.status == 400
    assert files_under(outside) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"


async def test_symlinks_inside_the_root_are_not_listed(testfs: Harness) -> None:
    await testfs.put("real", b"x")
    os.symlink(testfs.root / "real", testfs.root / "alias")
    async with testfs.request("GET", "/list/") as resp:
        assert await resp.json() == ["real"]


async def test_large_body_is_streamed_to_disk(testfs: Harness) -> None:
    """64 MB sent chunked (no Content-Length), far above aiohttp's 1 MB in-memory body limit."""
    size, chunk = 64 << 20, os.urandom(1 << 20)
    expected = hashlib.sha256(chunk * (size // len(chunk))).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    async with testfs.request("POST", "/files/big", data=body()) as resp:
        assert resp.status == 201, await resp.text()
    assert (testfs.root / "big").stat().st_size == size
    h = hashlib.sha256()
    async with testfs.request("GET", "/files/big") as resp:
        assert resp.headers["Content-Length"] == str(size)
        async for part in resp.content.iter_any():
            h.update(part)
    assert h.hexdigest() == expected


async def test_interrupted_upload_leaves_nothing(testfs: Harness) -> None:
    """A client that dies mid-body never produces a (partial) file, and its temp file goes."""
    await testfs.put("blob", b"old")
    reader, writer = await asyncio.open_connection("127.0.0.1", testfs.server.port)
    writer.write(b"POST /files/blob HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"y" * 300_000)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    tmp = testfs.root / TMP_DIR
    await until(lambda: not any(tmp.iterdir()) and tmp.exists(), timeout=10,
                what="the temp file of the aborted upload to be removed", interval=0.02)
    status, body, _ = await testfs.get("blob")
    assert (status, body) == (200, b"old")


async def test_list(testfs: Harness) -> None:
    for path in ("a/b/1", "a/b/2", "a/c", "ab", "d"):
        await testfs.put(path, path.encode())
    (testfs.root / TMP_DIR / "leftover.tmp").write_bytes(b"in flight")
    cases = {
        "/list/": ["a/b/1", "a/b/2", "a/c", "ab", "d"],
        "/list/a": ["a/b/1", "a/b/2", "a/c"],
        "/list/a/b/": ["a/b/1", "a/b/2"],
        "/list/a:b": ["a/b/1", "a/b/2"],
        "/list/a/c": ["a/c"],
        "/list/missing": [],
        "/list/a/b/1/below": [],
    }
    for url, expected in cases.items():
        async with testfs.request("GET", url) as resp:
            assert resp.status == 200
            assert json.loads(await resp.read()) == expected, url


async def test_conflicting_paths_are_409(testfs: Harness) -> None:
    await testfs.put("file", b"x")
    await testfs.put("dir/inner", b"y")
    for path in ("file/below", "dir"):
        async with testfs.request("POST", f"/files/{path}", data=b"z") as resp:
            assert resp.status == 409, path
    assert files_under(testfs.root) == ["dir/inner", "file"]


async def test_startup_clears_leftover_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / TMP_DIR).mkdir(parents=True)
    (root / TMP_DIR / "crashed.tmp").write_bytes(b"partial")
    server = TestServer(create_testfs_app(TestfsConfig(root=str(root))), host="127.0.0.1")
    await server.start_server()
    try:
        assert not (root / TMP_DIR / "crashed.tmp").exists()
    finally:
        await server.close()


async def test_over_long_names_are_400_not_500(testfs: Harness) -> None:
    """Names the file system would refuse (ENAMETOOLONG) get a clear 400 and store nothing."""
    await testfs.put("a/" + "n" * 255, b"longest component")
    for path in ("a/" + "n" * 300, "/".join(["d" * 200] * 25)):
        for method in ("POST", "GET", "HEAD"):
            async with testfs.request(method, f"/files/{path}", data=b"x" if method == "POST" else None) as resp:
                assert resp.status == 400, (method, len(path))
                if method != "HEAD":
                    assert "limit" in (await resp.json())["error"]
    assert files_under(testfs.root) == ["a/" + "n" * 255]
