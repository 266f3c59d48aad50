"""Blob reads and the blob upload protocol (``/v2/<name>/blobs/...``).

Uploads follow what real clients send: docker streams the whole blob in one PATCH with
``Transfer-Encoding: chunked``; skopeo/podman PATCH with or without Content-Length;
oras PUTs the whole body at once; chunked uploads carry an inclusive ``Content-Range``.
Every body is streamed to disk; a blob reaches the storage only after its digest checks out.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from kraken.core.digest import Digest, DigestError
from kraken.log import get_logger
from kraken.registry.context import RegistryContext, absolute_url
from kraken.registry.errors import RegistryError
from kraken.registry.names import is_valid_name, parse_digest
from kraken.registry.ranges import parse_read_range, parse_upload_range, upload_range_header
from kraken.registry.storage import BlobReader

log = get_logger("kraken.registry")


def _blob_headers(digest: Digest) -> dict[str, str]:
    return {
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }


async def read_blob(ctx: RegistryContext, request: web.Request, name: str, digest_text: str) -> web.StreamResponse:
    """HEAD/GET a blob; GET honours a single ``Range`` (206 with Content-Range)."""
    digest = parse_digest(digest_text)
    size = await ctx.storage.stat_blob(name, digest)
    if size is None:
        raise RegistryError("BLOB_UNKNOWN", detail={"digest": str(digest)})
    headers = _blob_headers(digest)
    if request.method == "HEAD":
        return web.Response(status=200, headers={**headers, "Content-Length": str(size)})
    byte_range = parse_read_range(request.headers.get("Range"), size)
    reader = await ctx.storage.open_blob(name, digest, byte_range)
    if reader is None:
        raise RegistryError("BLOB_UNKNOWN", detail={"digest": str(digest)})
    response = web.StreamResponse(status=206 if byte_range else 200, headers=headers)
    response.content_length = byte_range.length if byte_range else size
    if byte_range is not None:
        response.headers["Content-Range"] = byte_range.content_range()
    return await _stream(request, response, reader, digest)


async def _stream(
    request: web.Request, response: web.StreamResponse, reader: BlobReader, digest: Digest
) -> web.StreamResponse:
    """Send the reader's bytes. Once headers are out an error can no longer be reported, so a
    failure mid-body closes the connection: the client sees a short body, never a wrong one."""
    try:
        await response.prepare(request)
        await reader.send(request, response)
        await response.write_eof()
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - upstream or client failure mid-body
        if not response.prepared:
            raise
        log.warning("blob stream aborted", digest=digest, error=repr(e))
        if request.transport is not None:
            request.transport.close()
    finally:
        await reader.aclose()
    return response


# ---- uploads ---------------------------------------------------------------------------------

def _upload_url(name: str, uid: str) -> str:
    return f"/v2/{name}/blobs/uploads/{uid}"


def _upload_response(request: web.Request, status: int, name: str, uid: str, size: int) -> web.Response:
    headers = {
        "Location": absolute_url(request, _upload_url(name, uid)),
        "Range": upload_range_header(size),
        "Docker-Upload-UUID": uid,
    }
    if status != 204:  # a 204 carries no Content-Length (RFC 9110)
        headers["Content-Length"] = "0"
    return web.Response(status=status, headers=headers)


def _created(request: web.Request, name: str, digest: Digest) -> web.Response:
    return web.Response(status=201, headers={
        "Location": absolute_url(request, f"/v2/{name}/blobs/{digest}"),
        "Docker-Content-Digest": str(digest),
        "Content-Length": "0",
    })


async def start_upload(ctx: RegistryContext, request: web.Request, name: str) -> web.Response:
    """``POST uploads/``: a cross-repository mount, a monolithic upload (``?digest=`` with the
    body), or a new session (202). A mount that cannot be done falls back to a new session."""
    sessions = ctx.writable_sessions()
    mounted = await _try_mount(ctx, name, request.query.get("mount"), request.query.get("from"))
    if mounted is not None:
        return _created(request, name, mounted)
    digest_text = request.query.get("digest")
    if digest_text is not None:
        digest = parse_digest(digest_text)
        uid = sessions.start(name, request.remote or "")
        try:
            await sessions.append(name, uid, request.content.iter_any(), None)
            await sessions.finish(name, uid, digest)
        finally:
            if sessions.is_open(uid):
                await sessions.cancel(name, uid)
        return _created(request, name, digest)
    uid = sessions.start(name, request.remote or "")
    return _upload_response(request, 202, name, uid, 0)


async def _try_mount(ctx: RegistryContext, name: str, mount: str | None, source: str | None) -> Digest | None:
    if not mount or not source or not is_valid_name(source):
        return None
    try:
        digest = Digest.parse(mount)
    except DigestError:
        return None
    return digest if await ctx.storage.mount_blob(source, name, digest) else None


def _chunk_start(request: web.Request) -> int | None:
    """Where the body must land, from an inclusive ``Content-Range`` (None: append)."""
    header = request.headers.get("Content-Range")
    if header is None:
        return None
    try:
        start, end = parse_upload_range(header)
    except ValueError as e:
        raise RegistryError("RANGE_INVALID", detail=str(e)) from None
    length = request.content_length
    if length is not None and length != end - start + 1:
        raise RegistryError("SIZE_INVALID", detail=f"Content-Range {header} but Content-Length {length}")
    return start


async def patch_upload(ctx: RegistryContext, request: web.Request, name: str, uid: str) -> web.Response:
    sessions = ctx.writable_sessions()
    sessions.check(name, uid)
    start = _chunk_start(request)
    size = await sessions.append(name, uid, request.content.iter_any(), start)
    return _upload_response(request, 202, name, uid, size)


async def finish_upload(ctx: RegistryContext, request: web.Request, name: str, uid: str) -> web.Response:
    """``PUT <location>?digest=``, with an optional last chunk as the body."""
    sessions = ctx.writable_sessions()
    sessions.check(name, uid)
    digest_text = request.query.get("digest")
    if digest_text is None:
        raise RegistryError("DIGEST_INVALID", message="digest missing from the upload's PUT")
    digest = parse_digest(digest_text)
    if request.body_exists:
        await sessions.append(name, uid, request.content.iter_any(), _chunk_start(request))
    await sessions.finish(name, uid, digest)
    return _created(request, name, digest)


async def upload_status(ctx: RegistryContext, request: web.Request, name: str, uid: str) -> web.Response:
    sessions = ctx.writable_sessions()
    return _upload_response(request, 204, name, uid, sessions.size(name, uid))


async def cancel_upload(ctx: RegistryContext, name: str, uid: str) -> web.Response:
    await ctx.writable_sessions().cancel(name, uid)
    return web.Response(status=204)
