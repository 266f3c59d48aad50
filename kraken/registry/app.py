"""Mount the registry v2 API on an aiohttp application.

Repository names contain slashes, so one catch-all route takes ``/v2/...`` and a small
dispatcher splits the path at its *last* ``/blobs/``, ``/manifests/`` or ``/tags/list`` (the
grammar makes that unambiguous), validates the name, and calls the handler for the method.
Query parameters no handler reads (containerd's ``?ns=docker.io``) are ignored.
"""
from __future__ import annotations

import asyncio
import re
from typing import Awaitable, Callable
from urllib.parse import quote

import aiohttp
from aiohttp import web

from kraken.http.client import HTTPStatusError
from kraken.log import get_logger
from kraken.registry import blob_routes, manifest_routes, referrers
from kraken.registry.context import RegistryContext
from kraken.registry.errors import API_VERSION, API_VERSION_HEADER, RegistryError
from kraken.registry.names import validate_name
from kraken.registry.storage import RegistryStorage
from kraken.registry.uploads import UploadSessions
from kraken.store.cas import CAStore
from kraken.tasks import TaskOwner

log = get_logger("kraken.registry")

DEFAULT_MAX_MANIFEST_SIZE = 4 << 20
DEFAULT_UPLOAD_TTL = 3600.0

Handler = Callable[[RegistryContext, web.Request, str, dict[str, str]], Awaitable[web.StreamResponse]]

_PATHS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?P<name>.+)/tags/list"), "tags"),
    (re.compile(r"(?P<name>.+)/manifests/(?P<reference>[^/]+)"), "manifest"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/?"), "uploads"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/(?P<uid>[^/]+)"), "upload"),
    (re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)"), "blob"),
    (re.compile(r"(?P<name>.+)/referrers/(?P<digest>[^/]+)"), "referrers"),
]

def add_registry_routes(
    app: web.Application,
    storage: RegistryStorage,
    *,
    read_only: bool,
    uploads: CAStore | None = None,
    max_manifest_size: int = DEFAULT_MAX_MANIFEST_SIZE,
    upload_ttl: float = DEFAULT_UPLOAD_TTL,
) -> None:
    """Serve ``/v2/`` from ``storage``.

    ``read_only`` refuses every write with UNSUPPORTED (the agent). Otherwise ``uploads`` is
    the CAStore whose upload dir stages blob uploads (verified there, then handed to
    ``storage``); sessions idle for ``upload_ttl`` seconds are deleted by a background task.
    """
    if not read_only and uploads is None:
        raise ValueError("a writable registry needs an uploads store")
    sessions = UploadSessions(uploads, storage, upload_ttl) if uploads is not None and not read_only else None
    ctx = RegistryContext(storage, read_only, sessions, max_manifest_size)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        try:
            return await _dispatch(ctx, request)
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            raise _unavailable(request, e) from None
        except HTTPStatusError as e:
            if e.status < 500:
                raise
            raise _unavailable(request, e) from None

    app.router.add_route("*", "/v2", dispatch)
    app.router.add_route("*", "/v2/{tail:.*}", dispatch)
    app.on_response_prepare.append(_add_api_version)
    if sessions is not None:
        _run_cleanup(app, sessions)


def _run_cleanup(app: web.Application, sessions: UploadSessions) -> None:
    tasks = TaskOwner("registry")

    async def start(_: web.Application) -> None:
        tasks.spawn(sessions.run_cleanup(), "upload-cleanup")

    async def stop(_: web.Application) -> None:
        await tasks.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


async def _add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/v2" or request.path.startswith("/v2/"):
        response.headers[API_VERSION_HEADER] = API_VERSION


def _unavailable(request: web.Request, error: Exception) -> RegistryError:
    log.warning("upstream unavailable", method=request.method, path=request.path, error=repr(error))
    return RegistryError("UNAVAILABLE", detail=str(error)[:500])


async def _dispatch(ctx: RegistryContext, request: web.Request) -> web.StreamResponse:
    tail = request.match_info.get("tail", "")
    if tail.strip("/") == "":
        _allow(request, "GET", "HEAD")
        return web.json_response({})
    if tail == "_catalog":
        _allow(request, "GET", "HEAD")
        return await _catalog(ctx, request)
    for pattern, kind in _PATHS:
        m = pattern.fullmatch(tail)
        if m is not None:
            params = m.groupdict()
            name = validate_name(params.pop("name"))
            return await _HANDLERS[kind](ctx, request, name, params)
    raise RegistryError("UNSUPPORTED", status=404, message="unknown registry endpoint", detail={"path": request.path})


def _allow(request: web.Request, *methods: str) -> None:
    if request.method not in methods:
        raise RegistryError("UNSUPPORTED", detail={"method": request.method, "allowed": list(methods)})


async def _tags(ctx: RegistryContext, request: web.Request, name: str, _: dict[str, str]) -> web.StreamResponse:
    _allow(request, "GET", "HEAD")
    tags = await ctx.storage.list_tags(name)
    if not tags:
        raise RegistryError("NAME_UNKNOWN", detail={"name": name})
    page, link = _paginate(request, tags, f"/v2/{name}/tags/list")
    return web.json_response({"name": name, "tags": page}, headers=link)


async def _catalog(ctx: RegistryContext, request: web.Request) -> web.StreamResponse:
    repos = await ctx.storage.catalog()
    page, link = _paginate(request, repos, "/v2/_catalog")
    return web.json_response({"repositories": page}, headers=link)


def _paginate(request: web.Request, items: list[str], path: str) -> tuple[list[str], dict[str, str]]:
    """``n``/``last`` pagination over sorted ``items``; a ``Link`` header when more remain."""
    last = request.query.get("last")
    if last:
        items = [i for i in items if i > last]
    n_text = request.query.get("n")
    if n_text is None:
        return items, {}
    try:
        n = int(n_text)
    except ValueError:
        n = -1
    if n < 0:
        raise RegistryError("PAGINATION_NUMBER_INVALID", detail={"n": n_text})
    page = items[:n]
    if n == 0 or len(items) <= n:
        return page, {}
    return page, {"Link": f'<{path}?n={n}&last={quote(page[-1], safe="")}>; rel="next"'}


async def _manifest(ctx: RegistryContext, request: web.Request, name: str, p: dict[str, str]) -> web.StreamResponse:
    if request.method in ("GET", "HEAD"):
        return await manifest_routes.read_manifest(ctx, request, name, p["reference"])
    if request.method == "PUT":
        return await manifest_routes.put_manifest(ctx, request, name, p["reference"])
    raise RegistryError("UNSUPPORTED", detail={"method": request.method})


async def _blob(ctx: RegistryContext, request: web.Request, name: str, p: dict[str, str]) -> web.StreamResponse:
    _allow(request, "GET", "HEAD")
    return await blob_routes.read_blob(ctx, request, name, p["digest"])


async def _uploads(ctx: RegistryContext, request: web.Request, name: str, _: dict[str, str]) -> web.StreamResponse:
    _allow(request, "POST")
    return await blob_routes.start_upload(ctx, request, name)


async def _upload(ctx: RegistryContext, request: web.Request, name: str, p: dict[str, str]) -> web.StreamResponse:
    uid = p["uid"]
    if request.method == "PATCH":
        return await blob_routes.patch_upload(ctx, request, name, uid)
    if request.method == "PUT":
        return await blob_routes.finish_upload(ctx, request, name, uid)
    if request.method == "GET":
        return await blob_routes.upload_status(ctx, request, name, uid)
    if request.method == "DELETE":
        return await blob_routes.cancel_upload(ctx, name, uid)
    raise RegistryError("UNSUPPORTED", detail={"method": request.method})


async def _referrers(ctx: RegistryContext, request: web.Request, name: str, p: dict[str, str]) -> web.StreamResponse:
    _allow(request, "GET")
    return await referrers.list_referrers(ctx, request, name, p["digest"])


_HANDLERS: dict[str, Handler] = {
    "tags": _tags,
    "manifest": _manifest,
    "uploads": _uploads,
    "upload": _upload,
    "blob": _blob,
    "referrers": _referrers,
}
