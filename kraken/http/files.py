"""Sending (part of) a local file as a response body without holding it in memory.

Two ways, both bounded in memory whatever the file's size or the number of clients:

- ``sendfile`` hands the bytes from the page cache to the socket: nothing is copied into this
  process. Used for small files (no thread hop per response) and wherever copying is not
  possible (another event loop).
- Large files are copied by a worker thread (``pread`` into a per-thread buffer, ``write``
  to the socket) in bursts that stop when the socket is full; the event loop waits for the
  socket to take more. This moves the copy into the sending process: with ``sendfile`` the
  receiver copies straight from the page cache, and a client on the same host (curl, a
  container runtime behind the agent) becomes the bottleneck; with the copy here its reads
  come from freshly written socket buffers. Measured on loopback with curl: a cached 1 GiB
  blob in 0.39 s instead of 0.56 s through the agent (docs/BENCHMARKS.md, "Warm pulls"). A client that
  reads slowly, or not at all, holds no thread and no buffer: only the loop waits for it.

The kernel's queue is where a stalled reader shows either way (the write timeout of
kraken.http.server reads its counters). Where neither works (TLS) the file goes in small
chunks, each written once the connection took the previous ones.
"""
from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any, BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

FILE_CHUNK = 16 << 10
#: Files smaller than this go by ``sendfile``: one system call, no thread hop.
COPY_MIN = 1 << 20
#: The worker threads' buffer: large enough for few system calls, small enough to stay in
#: the CPU's cache between the read and the write.
COPY_BUFFER = 512 << 10
#: At most this much per burst, so one fast client does not keep a pool thread for long.
COPY_BURST = 16 << 20

_buffers = threading.local()


async def send_file(
    request: web.Request, f: BinaryIO, size: int, headers: Mapping[str, str], status: int = 200,
) -> web.StreamResponse:
    """Answer ``request`` with the first ``size`` bytes of the open file ``f``."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = size
    await response.prepare(request)
    await write_file(request, response, f, 0, size)
    await response.write_eof()
    return response


class FileResponse(web.FileResponse):
    """aiohttp's file response (Range, conditional requests) with its body sent by
    :func:`write_file` instead of aiohttp's ``sendfile``."""

    async def _sendfile(self, request: web.BaseRequest, fobj: Any, offset: int, count: int) -> AbstractStreamWriter:
        if self.compression or not isinstance(request, web.Request):
            return await super()._sendfile(request, fobj, offset, count)
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        await write_file(request, self, fobj, offset, count)
        await web.StreamResponse.write_eof(self)
        return writer


async def write_file(request: web.Request, response: web.StreamResponse, f: BinaryIO, offset: int, count: int) -> None:
    """Write ``count`` bytes of ``f`` from ``offset`` as the body of the prepared ``response``."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    sock = transport.get_extra_info("socket")
    # The headers are normally in the kernel already; if aiohttp still buffers some, sendfile
    # (which waits for that buffer to empty) keeps the order.
    if (count >= COPY_MIN and sock is not None and transport.get_extra_info("ssl_object") is None
            and sys.platform == "linux" and transport.get_write_buffer_size() == 0):
        await _copy(transport, sock.fileno(), f.fileno(), offset, count)
        return
    try:
        await asyncio.get_running_loop().sendfile(transport, f, offset, count, fallback=False)
        return
    except NotImplementedError:
        pass
    except RuntimeError:
        if transport.is_closing():
            raise ConnectionResetError("connection lost") from None
    fd, end = f.fileno(), offset + count
    while offset < end:
        chunk = await asyncio.to_thread(os.pread, fd, min(FILE_CHUNK, end - offset), offset)
        if not chunk:
            raise RuntimeError(f"{getattr(f, 'name', 'file')} shrank while being sent")
        await response.write(chunk)
        offset += len(chunk)


async def _copy(transport: asyncio.BaseTransport, sock_fd: int, file_fd: int, offset: int, count: int) -> None:
    """Copy the bytes to the socket in worker-thread bursts, waiting on the loop whenever the
    socket is full. The transport's write buffer is empty, so nothing else writes meanwhile.

    The loop is told about the socket through a duplicate descriptor: the transport owns the
    original (a loop refuses a second watcher on it), and the duplicate is the same socket."""
    loop = asyncio.get_running_loop()
    dup = os.dup(sock_fd)
    try:
        end = offset + count
        while offset < end:
            if transport.is_closing():
                raise ConnectionResetError("connection lost")
            burst = loop.run_in_executor(None, _burst, file_fd, dup, offset, end)
            try:
                sent, full = await asyncio.shield(burst)
            except asyncio.CancelledError:
                await asyncio.wait([burst])  # the thread writes to ``dup``: not closed under it
                raise
            offset += sent
            if full:
                await _writable(loop, dup)
    finally:
        os.close(dup)


def _burst(file_fd: int, sock_fd: int, offset: int, end: int) -> tuple[int, bool]:
    """Copy from ``offset`` until the socket is full, ``end`` or :data:`COPY_BURST`: the bytes
    sent, and whether the socket was full."""
    buffer = getattr(_buffers, "view", None)
    if buffer is None:
        buffer = _buffers.view = memoryview(bytearray(COPY_BUFFER))
    sent = 0
    limit = min(end, offset + COPY_BURST)
    while offset < limit:
        n = os.preadv(file_fd, [buffer[:min(COPY_BUFFER, limit - offset)]], offset)
        if n == 0:
            raise RuntimeError("file shrank while being sent")
        try:
            written = os.write(sock_fd, buffer[:n])
        except BlockingIOError:
            return sent, True
        sent += written
        offset += written
        if written < n:
            return sent, True
    return sent, False


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Until the socket ``fd`` takes more bytes (or failed: the next write says how)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
