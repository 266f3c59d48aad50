"""testfs: a toy HTTP file store used as the storage backend in development and tests.

Files live under ``config.root`` (a :class:`~kraken.backend.filetree.FileTree`, the same
storage the ``file`` backend uses), addressed by the path after ``/files/`` with ``:`` read as
``/``. Paths that would leave the root (``..``, absolute, symlinks pointing out) get 400.
Request bodies are streamed to a temp file and renamed into place, so a reader sees the old
file or the new one, never a partial one; downloads are streamed from disk with Range support.
Errors are ``{"error"}`` (:mod:`kraken.http.errors`).
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from stat import S_ISREG

from aiohttp import web

from kraken.backend.filetree import FileTree, UnsafePath
from kraken.core.ranges import ByteRange, RangeNotSatisfiable, parse_range
from kraken.http.app import create_app
from kraken.http.errors import ErrorTable, JsonError
from kraken.http.files import write_file
from kraken.http.server import Site, site
from kraken.http.tls import ClientAuth
from kraken.log import get_logger
from kraken.testfs.config import TestfsConfig

COMPONENT = "testfs"
log = get_logger(COMPONENT)

TREE: web.AppKey[FileTree] = web.AppKey("testfs_tree", FileTree)

# Opening a path fails with these when there is no file there.
_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


#: testfs's exceptions -> HTTP status: a path that would leave the root (or that the file
#: system cannot hold) is the client's error.
ERRORS: ErrorTable = {UnsafePath: 400}


def _resolve(request: web.Request) -> Path:
    return request.app[TREE].resolve(request.match_info["path"])


def _not_found(request: web.Request) -> JsonError:
    return JsonError(404, f"no file {request.match_info['path']!r}")


def _byte_range(request: web.Request, size: int) -> ByteRange | None:
    """The range to serve with 206, or None to serve everything with 200 (see
    :func:`kraken.core.ranges.parse_range`); an unsatisfiable one raises 416."""
    try:
        return parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable as e:
        raise JsonError(416, str(e), headers={"Content-Range": e.content_range}) from None


async def head_file(request: web.Request) -> web.Response:
    path = _resolve(request)
    try:
        st = await asyncio.to_thread(os.stat, path)
    except _MISSING:
        raise _not_found(request) from None
    if not S_ISREG(st.st_mode):
        raise _not_found(request)
    size = str(st.st_size)
    return web.Response(headers={"Size": size, "Content-Length": size, "Accept-Ranges": "bytes"})


async def get_file(request: web.Request) -> web.StreamResponse:
    path = _resolve(request)
    try:
        # Inline: opening is a metadata call, and a thread could leak the descriptor if the
        # request were cancelled while it ran.
        f = open(path, "rb")  # noqa: SIM115 - closed by the `with f:` below
    except _MISSING:
        raise _not_found(request) from None
    with f:
        st = os.fstat(f.fileno())
        if not S_ISREG(st.st_mode):
            raise _not_found(request)
        size = st.st_size
        rng = _byte_range(request, size)
        start, length = (rng.start, rng.length) if rng is not None else (0, size)
        resp = web.StreamResponse(status=200 if rng is None else 206)
        resp.content_type = "application/octet-stream"
        resp.content_length = length
        resp.headers["Accept-Ranges"] = "bytes"
        if rng is not None:
            resp.headers["Content-Range"] = rng.content_range()
        await resp.prepare(request)
        # Files are only ever replaced by rename, so the open file's content is fixed.
        await write_file(request, resp, f, start, length)
        await resp.write_eof()
        return resp


async def put_file(request: web.Request) -> web.Response:
    """POST/PUT: stream the body into place atomically; 201 with the stored size."""
    writer = request.app[TREE].writer(request.match_info["path"])
    try:
        async with writer:
            async for chunk in request.content.iter_any():
                await writer.write(chunk)
    except (IsADirectoryError, NotADirectoryError, FileExistsError) as e:
        raise JsonError(409, f"cannot store {request.match_info['path']!r}: {e.strerror}") from None
    return web.json_response({"size": writer.size}, status=201)


async def list_files(request: web.Request) -> web.Response:
    tree = request.app[TREE]
    prefix = request.match_info["prefix"]
    paths = await asyncio.to_thread(tree.files_under, prefix)
    return web.json_response(paths)


def create_testfs_app(config: TestfsConfig) -> web.Application:
    tree = FileTree(config.root)

    async def readiness() -> None:
        if not await asyncio.to_thread(os.access, tree.root, os.W_OK):
            raise RuntimeError(f"root {tree.root} is not a writable directory")

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(tree.root.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(tree.clear_tmp)
        log.info("serving files", root=tree.root)
        log.warning("testfs is a development backend: no authentication, anyone who reaches it can "
                    "read and replace every blob and tag; use a real storage backend in production",
                    host=config.listen.host, port=config.listen.port)
        yield

    app = create_app(COMPONENT, readiness=readiness, errors=ERRORS)
    app[TREE] = tree
    app.cleanup_ctx.append(lifecycle)
    app.router.add_route("HEAD", "/files/{path:.*}", head_file)
    app.router.add_route("GET", "/files/{path:.*}", get_file)
    app.router.add_route("POST", "/files/{path:.*}", put_file)
    app.router.add_route("PUT", "/files/{path:.*}", put_file)
    app.router.add_route("GET", "/list/{prefix:.*}", list_files)
    return app


def sites(config: TestfsConfig) -> list[Site]:
    return [site(create_testfs_app(config), config.listen, config.tls, ClientAuth.REQUIRED)]
