"""Sending (part of) a local file as a response body without holding it in memory.

``sendfile`` hands the bytes from the page cache to the socket: nothing is copied into this
process, so a peer that reads slowly, or not at all, costs no memory whatever the file's
size (the write timeout of kraken.http.server sees such a stall in the kernel's counters).
Where ``sendfile`` is unavailable (TLS, another event loop) the file goes in small chunks,
each written once the connection took the previous ones.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import BinaryIO

from aiohttp import web

FILE_CHUNK = 16 << 10


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


async def write_file(request: web.Request, response: web.StreamResponse, f: BinaryIO, offset: int, count: int) -> None:
    """Write ``count`` bytes of ``f`` from ``offset`` as the body of the prepared ``response``."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
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
