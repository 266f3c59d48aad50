"""Mount the registry v2 API on an aiohttp application.

Repository names contain slashes, so one catch-all route takes ``/v2/...`` and a small
dispatcher splits the path at its *last* ``/blobs/``, ``/manifests/`` or ``/tags/list`` (the
grammar makes that unambiguous), validates the name, and calls the handler for the method.
Query parameters no handler reads (containerd's ``?ns=docker.io``) are ignored.
"""
from __future__ import annotations

import errno
import re
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import aiohttp
from aiohttp import web

from kraken.http.app import ERROR_RENDERERS
from kraken.http.client import HTTPStatusError
from kraken.log import get_logger
from kraken.registry import blob_routes, manifest_routes, referrers
from kraken.registry.auth import Authenticator, required_access
from kraken.registry.context import RegistryContext
from kraken.registry.errors import API_VERSION, API_VERSION_HEADER, RegistryError
from kraken.registry.names import parse_reference, validate_name
from kraken.registry.references import DEFAULT_MAX_REFERENCES
from kraken.registry.storage import RegistryStorage
from kraken.registry.uploads import DEFAULT_UPLOAD_LIMITS, UploadLimits, UploadSessions
from kraken.store.cas import CAStore
from kraken.tasks import TaskOwner

log = get_logger("kraken.registry")

DEFAULT_MAX_MANIFEST_SIZE = 4 << 20
DEFAULT_UPLOAD_TTL = 3600.0

Handler = Callable[[RegistryContext, web.Request, str, dict[str, str]], Awaitable[web.StreamResponse]]

# DOTALL: a name with a newline is matched (and refused as NAME_INVALID), not "unknown endpoint".
_PATHS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?P<name>.+)/tags/list", re.DOTALL), "tags"),
    (re.compile(r"(?P<name>.+)/manifests/(?P<reference>[^/]+)", re.DOTALL), "manifest"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/?", re.DOTALL), "uploads"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/(?P<uid>[^/]+)", re.DOTALL), "upload"),
    (re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)", re.DOTALL), "blob"),
    (re.compile(r"(?P<name>.+)/referrers/(?P<digest>[^/]+)", re.DOTALL), "referrers"),
]

#: The methods each endpoint serves when writable; a 405 names them in ``Allow`` (RFC 9110).
_METHODS: dict[str, tuple[str, ...]] = {
    "base": ("GET", "HEAD"),
    "catalog": ("GET", "HEAD"),
    "tags": ("GET", "HEAD"),
    "manifest": ("GET", "HEAD", "PUT"),
    "uploads": ("POST",),
    "upload": ("GET", "PATCH", "PUT", "DELETE"),
    "blob": ("GET", "HEAD"),
    "referrers": ("GET",),
}
_READ_METHODS = frozenset({"GET", "HEAD"})


def add_registry_routes(
    app: web.Application,
    storage: RegistryStorage,
    *,
    read_only: bool,
    uploads: CAStore | None = None,
    max_manifest_size: int = DEFAULT_MAX_MANIFEST_SIZE,
    upload_ttl: float = DEFAULT_UPLOAD_TTL,
    max_manifest_references: int = DEFAULT_MAX_REFERENCES,
    upload_limits: UploadLimits = DEFAULT_UPLOAD_LIMITS,
    auth: Authenticator | None = None,
) -> None:
    """Serve ``/v2/`` from ``storage``.

    ``read_only`` refuses every write with UNSUPPORTED (the agent). Otherwise ``uploads`` is
    the CAStore whose upload dir stages blob uploads (verified there, then handed to
    ``storage``); sessions idle for ``upload_ttl`` seconds are deleted by a background task.
    ``upload_limits`` caps the sessions open at once (per client address, in total). A pushed
    manifest may reference at most ``max_manifest_references`` blobs and manifests.
    ``auth`` (the proxy's ``auth:``) is asked about every request first; None serves all.
    """
    if not read_only and uploads is None:
        raise ValueError("a writable registry needs an uploads store")
    sessions = (UploadSessions(uploads, storage, upload_ttl, upload_limits)
                if uploads is not None and not read_only else None)
    ctx = RegistryContext(storage, read_only, sessions, max_manifest_size, max_manifest_references)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        try:
            return await _dispatch(ctx, auth, request)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            raise _unavailable(request, e) from None
        except HTTPStatusError as e:
            if e.status == 405:
                # A backend that refuses the write (a pull-through namespace's origin).
                raise RegistryError("UNSUPPORTED", message=e.message[:500]) from None
            if e.status < 500:
                raise
            raise _unavailable(request, e) from None

    app.router.add_route("*", "/v2", dispatch)
    # [\s\S], not ".": a path with a newline (%0A) must reach the dispatcher (NAME_INVALID...),
    # not fall through to aiohttp's plain-text 404.
    app.router.add_route("*", r"/v2/{tail:[\s\S]*}", dispatch)
    app.on_response_prepare.append(_add_api_version)
    app[ERROR_RENDERERS].append(_render_unexpected)
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


def _is_registry_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


async def _add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    if _is_registry_path(request.path):
        response.headers[API_VERSION_HEADER] = API_VERSION


def _render_unexpected(request: web.Request, error: Exception) -> web.Response | None:
    """Any failure nothing else mapped (logged by the app middleware) is still registry error
    JSON under ``/v2``, which clients parse: ``UNKNOWN`` 500, or 507 for a full disk."""
    if not _is_registry_path(request.path):
        return None
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return RegistryError("UNKNOWN", status=507, message="insufficient storage").to_response()
    return RegistryError("UNKNOWN", detail=type(error).__name__).to_response()


def _unavailable(request: web.Request, error: Exception) -> RegistryError:
    log.warning("upstream unavailable", method=request.method, path=request.path, error=repr(error))
    return RegistryError("UNAVAILABLE", detail=str(error)[:500])


async def _dispatch(ctx: RegistryContext, auth: Authenticator | None, request: web.Request) -> web.StreamResponse:
    tail = request.match_info.get("tail", "")
    params: dict[str, str]
    if tail.strip("/") == "":
        kind, name, params = "base", "", {}
    elif tail == "_catalog":
        kind, name, params = "catalog", "", {}
    else:
        kind, name, params = _route(tail, request)
    try:
        if auth is not None:
            wanted = required_access(kind, request.method, validate_name(name) if name else name, request.query)
            await auth.authenticate(request, wanted)
        if kind == "base":
            _allow(request, "GET", "HEAD")
            return web.json_response({})
        if kind == "catalog":
            _allow(request, "GET", "HEAD")
            return await _catalog(ctx, request)
        return await _HANDLERS[kind](ctx, request, validate_name(name), params)
    except RegistryError as e:
        if e.status == 405:
            e.headers.setdefault("Allow", _allowed(ctx, kind, request.method))
        raise


def _route(tail: str, request: web.Request) -> tuple[str, str, dict[str, str]]:
    for pattern, kind in _PATHS:
        m = pattern.fullmatch(tail)
        if m is not None:
            params = m.groupdict()
            return kind, params.pop("name"), params
    raise RegistryError("UNSUPPORTED", status=404, message="unknown registry endpoint",
                        detail={"path": request.path[:300]})


def _allowed(ctx: RegistryContext, kind: str, refused: str) -> str:
    """The ``Allow`` value of a 405: the endpoint's methods (when read-only: its reads, and
    nothing of uploads), or none when the method refused was one of them (the storage does
    not offer the endpoint)."""
    methods = list(_METHODS[kind])
    if ctx.read_only:
        methods = [] if kind in ("uploads", "upload") else [m for m in methods if m in _READ_METHODS]
    return "" if refused in methods else ", ".join(methods)


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
        _readable_reference(name, p["reference"])
        return await manifest_routes.read_manifest(ctx, request, name, p["reference"])
    if request.method == "PUT":
        return await manifest_routes.put_manifest(ctx, request, name, p["reference"])
    raise RegistryError("UNSUPPORTED", detail={"method": request.method})


def _readable_reference(name: str, reference: str) -> None:
    """A GET/HEAD of a manifest answers 200 or 404 only (the distribution spec's table): a
    reference that cannot name a manifest is MANIFEST_UNKNOWN, not TAG_INVALID (a PUT with
    it stays TAG_INVALID / DIGEST_INVALID)."""
    try:
        parse_reference(reference)
    except RegistryError as e:
        raise RegistryError("MANIFEST_UNKNOWN", detail={"name": name, "reference": reference[:200],
                                                        "reason": e.message}) from None


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
