"""kraken.http.files: file bodies by ``sendfile`` (small) or by worker-thread copies (large),
byte for byte, with Range through :class:`FileResponse`, and no thread or descriptor left
behind by a client that stops reading and goes away."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kraken.http import files
from kraken.http.files import COPY_MIN, FileResponse, send_file
from tests.support.waiting import until

SMALL = 4096
LARGE = COPY_MIN * 3 + 12345  # several bursts' buffers, not a multiple of the buffer


@pytest.fixture
def blobs(tmp_path: Path) -> dict[str, bytes]:
    data = {"small": os.urandom(SMALL), "large": os.urandom(LARGE)}
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    return data


@pytest.fixture
async def server(tmp_path: Path, blobs: dict[str, bytes]) -> AsyncIterator[TestServer]:
    async def sent(request: web.Request) -> web.StreamResponse:
        with open(tmp_path / request.match_info["name"], "rb") as f:
            return await send_file(request, f, os.fstat(f.fileno()).st_size, {"Content-Type": "x/y"})

    async def file_response(request: web.Request) -> web.StreamResponse:
        return FileResponse(tmp_path / request.match_info["name"])

    app = web.Application()
    app.router.add_get("/send/{name}", sent)
    app.router.add_get("/fr/{name}", file_response)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.mark.parametrize("route", ["send", "fr"])
@pytest.mark.parametrize("name", ["small", "large"])
async def test_the_body_is_the_file(server: TestServer, blobs: dict[str, bytes], route: str, name: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # twice on one keep-alive connection: the second request still works
            async with session.get(server.make_url(f"/{route}/{name}")) as resp:
                assert resp.status == 200
                assert resp.content_length == len(blobs[name])
                assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(blobs[name]).digest()


async def test_a_large_range_is_copied_exactly(server: TestServer, blobs: dict[str, bytes]) -> None:
    start, end = 1000, COPY_MIN * 2 + 7
    async with (aiohttp.ClientSession() as session,
                session.get(server.make_url("/fr/large"), headers={"Range": f"bytes={start}-{end}"}) as resp):
        assert resp.status == 206
        assert await resp.read() == blobs["large"][start:end + 1]


async def test_a_large_body_is_copied_not_sendfiled(server: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy path is the one taken for a large file (so the tests above exercise it)."""
    bursts: list[int] = []
    burst = files._burst

    def counted(file_fd: int, sock_fd: int, offset: int, end: int) -> tuple[int, bool]:
        result = burst(file_fd, sock_fd, offset, end)
        bursts.append(result[0])
        return result

    monkeypatch.setattr(files, "_burst", counted)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/send/large")) as resp:
            assert len(await resp.read()) == LARGE
        async with session.get(server.make_url("/send/small")) as resp:
            assert len(await resp.read()) == SMALL
    assert sum(bursts) == LARGE


async def test_a_reader_that_stops_and_leaves_holds_no_descriptor(server: TestServer) -> None:
    """The copy waits on the loop for the stalled socket (no thread kept busy), and once the
    client is gone it ends and closes its duplicate of the socket."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
    fds_before = len(os.listdir("/proc/self/fd"))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /send/large HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.to_thread(sock.recv, 1024)).startswith(b"HTTP/1.1 200")
    # Stalled with the response far from sent: the only pool thread is free for other work.
    assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), timeout=5) == 42
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close with a reset
    sock.close()
    await until(lambda: _fds_at_most(fds_before), timeout=10, what="the copy to end and close its descriptors")


async def _fds_at_most(count: int) -> bool:
    return len(os.listdir("/proc/self/fd")) <= count
