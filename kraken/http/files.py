"""Sending a local file as a response body without holding it in memory.

A file is read in small chunks (in a worker thread) and each chunk is written only once the
connection took the previous ones (``StreamResponse.write`` waits while aiohttp's buffer is
over its high-water mark): a peer that reads slowly, or not at all, holds at most about two
chunks of this process's memory, however big the file and however many such peers.
"""
from __future__ import annotations

import asyncio
import os
from typing import BinaryIO, Mapping

from aiohttp import web

FILE_CHUNK = 64 << 10


async def send_file(
    request: web.Request, f: BinaryIO, size: int, headers: Mapping[str, str], status: int = 200,
) -> web.StreamResponse:
    """Answer ``request`` with the first ``size`` bytes of the open file ``f``."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = size
    await response.prepare(request)
    fd = f.fileno()
    offset = 0
    while offset < size:
        chunk = await asyncio.to_thread(os.pread, fd, min(FILE_CHUNK, size - offset), offset)
        if not chunk:
            raise RuntimeError(f"{getattr(f, 'name', 'file')} shrank while being sent")
        await response.write(chunk)
        offset += len(chunk)
    await response.write_eof()
    return response
