"""Connection limits of every component's server (kraken/http/server.py), on a real process.

A testfs process runs with short ``http:`` timeouts; raw sockets play the stalled clients
(half a request head, a body shorter than its Content-Length, a response never read, an
idle keep-alive connection, one connection too many) and the slow but live ones that must
not be cut. What a client sees is asserted (the connection closes, the bytes it got), and the
server's metrics say why.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import select
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from kraken.devcluster import CONFIG_ROOT, Process, Supervisor, free_port, write_overlay
from tests.support.metrics import metric
from tests.support.rawsockets import read_until_closed
from tests.support.waiting import until, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0  # longer than the header timeout: aiohttp's idle timer also closes half heads
MAX_CONNECTIONS = 4
STARVED_FDS = 256
MiB = 1 << 20


@pytest.fixture(scope="module")
def testfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    workdir = tmp_path_factory.mktemp("limits")
    sup = Supervisor(workdir)
    port = free_port()
    config = write_overlay(workdir / "testfs.yaml", CONFIG_ROOT / "testfs" / "base.yaml", {
        "listen": {"host": "127.0.0.1", "port": port},
        "http": {"header_timeout": f"{TIMEOUT}s", "body_timeout": f"{TIMEOUT}s", "write_timeout": f"{TIMEOUT}s",
                 "idle_timeout": f"{IDLE_TIMEOUT}s", "max_connections": MAX_CONNECTIONS},
    })
    proc = Process("testfs", "testfs", port, config, workdir / "testfs.log",
                   extra_args=["--root", str(workdir / "root")])
    try:
        yield sup.start(proc)
    finally:
        sup.stop_all()


@pytest.fixture(scope="module")
def starved_testfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A testfs with default connection limits run under ``ulimit -n 256``."""
    workdir = tmp_path_factory.mktemp("starved")
    sup = Supervisor(workdir)
    port = free_port()
    config = write_overlay(workdir / "testfs.yaml", CONFIG_ROOT / "testfs" / "base.yaml", {
        "listen": {"host": "127.0.0.1", "port": port}, "http": {"header_timeout": f"{TIMEOUT}s"},
    })
    proc = Process("testfs", "testfs", port, config, workdir / "testfs.log",
                   extra_args=["--root", str(workdir / "root")])
    proc.argv = ["sh", "-c", f'ulimit -n {STARVED_FDS} && exec "$0" "$@"', *proc.command()]
    try:
        yield sup.start(proc)
    finally:
        sup.stop_all()


def _get(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    """One request on a connection of its own (urllib closes it), so no pooled connection
    of the test counts against the server's limit."""
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def dropped(proc: Process, reason: str) -> float:
    _, body = await asyncio.to_thread(_get, f"{proc.url}/metrics")
    return metric(body.decode(), "kraken_http_connections_dropped_total", default=0.0, reason=reason)


async def connections(proc: Process) -> float:
    _, body = await asyncio.to_thread(_get, f"{proc.url}/metrics")
    return metric(body.decode(), "kraken_http_connections_open")


def connect(proc: Process, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10 * TIMEOUT)
    sock.connect(("127.0.0.1", proc.port))
    return sock


async def closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes ``sock`` (the test fails if it never does)."""
    start = time.monotonic()
    await asyncio.to_thread(read_until_closed, sock)
    return time.monotonic() - start


@pytest.fixture(autouse=True)
async def no_leftover_connections(testfs: Process) -> None:
    """Each test starts with only its own connections open (the metrics request's)."""
    await until(lambda: _no_others(testfs), what="earlier connections to close")


async def _no_others(proc: Process) -> bool:
    return await connections(proc) == 1


async def test_half_a_request_head_is_dropped_after_the_header_timeout(testfs: Process) -> None:
    before = await dropped(testfs, "header_timeout")
    with connect(testfs) as partial, connect(testfs) as silent:
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        assert await closed_after(partial) >= TIMEOUT * 0.9
        assert await closed_after(silent) < 10 * TIMEOUT
    assert await dropped(testfs, "header_timeout") == before + 2


async def test_a_body_shorter_than_its_length_is_dropped_and_nothing_is_stored(testfs: Process) -> None:
    before = await dropped(testfs, "body_timeout")
    with connect(testfs) as sock:
        sock.sendall(b"PUT /files/short HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        assert await closed_after(sock) >= TIMEOUT * 0.9
    assert await dropped(testfs, "body_timeout") == before + 1
    status, _ = await asyncio.to_thread(_get, f"{testfs.url}/files/short")
    assert status == 404
    # The handler's failure is the client's going away: logged as such, without a traceback.
    log = testfs.log_path.read_text()
    assert "method=PUT path=/files/short status=499" in log
    assert "unhandled error method=PUT path=/files/short" not in log


async def test_a_slow_but_steady_body_is_not_dropped(testfs: Process) -> None:
    parts = [os.urandom(100) for _ in range(8)]
    with connect(testfs) as sock:
        sock.sendall(f"PUT /files/slow HTTP/1.1\r\nHost: x\r\nContent-Length: {800}\r\n\r\n".encode())
        for part in parts:  # 8 parts 0.3 s apart: twice the body timeout in all
            sock.sendall(part)
            await asyncio.sleep(0.3)  # the pace of a slow sender, not a synchronisation
        assert (await asyncio.to_thread(sock.recv, 1024)).startswith(b"HTTP/1.1 201")
    assert await asyncio.to_thread(_get, f"{testfs.url}/files/slow") == (200, b"".join(parts))


async def test_a_response_never_read_is_dropped_after_the_write_timeout(testfs: Process) -> None:
    data = os.urandom(32 * MiB)
    assert (await asyncio.to_thread(_get, f"{testfs.url}/files/big", "PUT", data))[0] == 201
    before = await dropped(testfs, "write_timeout")
    with connect(testfs, rcvbuf=4096) as sock:
        sock.sendall(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: _dropped_more(testfs, before), timeout=10 * TIMEOUT, what="the write timeout")
        received = await asyncio.to_thread(read_until_closed, sock)
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received) < len(data)


async def _dropped_more(proc: Process, before: float) -> bool:
    return await dropped(proc, "write_timeout") > before


async def test_a_slow_but_steady_reader_gets_the_whole_response(testfs: Process) -> None:
    data = os.urandom(256 << 10)
    assert (await asyncio.to_thread(_get, f"{testfs.url}/files/steady", "PUT", data))[0] == 201
    before = await dropped(testfs, "write_timeout")
    received = bytearray()
    with connect(testfs, rcvbuf=4096) as sock:
        sock.sendall(b"GET /files/steady HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        start = time.monotonic()
        while chunk := await asyncio.to_thread(sock.recv, 64 << 10):
            received += chunk
            await asyncio.sleep(0.03)  # the pace of a slow reader, not a synchronisation
    assert time.monotonic() - start > TIMEOUT  # slower than the write timeout, yet never stalled
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    assert await dropped(testfs, "write_timeout") == before


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(testfs: Process) -> None:
    with connect(testfs) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.to_thread(sock.recv, 1024)).startswith(b"HTTP/1.1 200")
        assert IDLE_TIMEOUT * 0.9 <= await closed_after(sock) < 10 * TIMEOUT


async def test_a_connection_beyond_the_limit_is_closed_at_once(testfs: Process) -> None:
    _, body = await asyncio.to_thread(_get, f"{testfs.url}/metrics")
    before = metric(body.decode(), "kraken_http_connections_refused_total")
    held: list[socket.socket] = []
    try:
        await until(
            lambda: _hold_one_more(testfs, held), timeout=10 * TIMEOUT, what="the connections to fill the limit"
        )
        with connect(testfs) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.to_thread(read_until_closed, extra) == b""
    finally:
        for sock in held:
            sock.close()
    _, body = await asyncio.to_thread(_get, f"{testfs.url}/metrics")
    assert metric(body.decode(), "kraken_http_connections_refused_total") > before


def _hold_one_more(proc: Process, held: list[socket.socket]) -> bool:
    """Open a keep-alive connection the server answers (one that has just been let go, such as
    the last metrics request's, may still count for a moment); True once the limit is full."""
    sock = connect(proc)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    if sock.recv(1024).startswith(b"HTTP/1.1 200"):
        held.append(sock)
    else:
        sock.close()
    return len(held) == MAX_CONNECTIONS


async def test_a_flood_of_stalled_connections_does_not_exhaust_the_descriptors(starved_testfs: Process) -> None:
    """More silent connections than the process has descriptors: the ones beyond
    max_connections (lowered to fit ``ulimit -n``) are closed at once, the rest after the
    header timeout, and the server answers again."""
    flood = []
    try:
        for _ in range(STARVED_FDS + 100):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", starved_testfs.port))
            flood.append(sock)
        # Let the flood land first (the server takes every connection in turn), so the
        # health checks queue behind it rather than slipping in between.
        await asyncio.to_thread(_connected, flood, 5 * TIMEOUT)
        await until(lambda: _healthy(starved_testfs), timeout=10 * TIMEOUT, what="the server to answer again")
    finally:
        for sock in flood:
            sock.close()
    _, body = await asyncio.to_thread(_get, f"{starved_testfs.url}/metrics")
    text = body.decode()
    assert metric(text, "kraken_http_connections_refused_total") > 0
    assert metric(text, "kraken_http_connections_dropped_total", reason="header_timeout") > 0
    assert "lowered_to=192" in starved_testfs.log_path.read_text()


async def _healthy(proc: Process) -> bool:
    try:
        return await asyncio.to_thread(_get, f"{proc.url}/health") == (200, b"OK\n")
    except OSError:
        return False


def _connected(socks: list[socket.socket], timeout: float) -> None:
    """Until every socket's connect completed, or ``timeout`` (a server that stopped accepting
    leaves some pending for ever)."""
    pending = list(socks)

    def all_connected() -> bool:
        _, writable, _ = select.select([], pending, [], 0)
        pending[:] = [s for s in pending if s not in writable]
        return not pending

    with contextlib.suppress(TimeoutError):  # the caller's next wait tells what it means
        wait_until(all_connected, timeout, message="the flood's connections")
