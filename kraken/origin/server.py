"""The origin's HTTP API (see docs/CONTRACTS.md, "origin"): routes mapped onto OriginService.

``POST /forcecleanup`` and uploads with ``?replica=true`` answer only cluster peers
(:mod:`kraken.http.peers`); anyone else gets 403.
"""
from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web

from kraken.backend import BackendError, ReadOnlyBackend
from kraken.core.digest import Digest, DigestError
from kraken.core.metainfo import EmptyBlobError
from kraken.core.ranges import parse_content_range
from kraken.http.allow import peer_address
from kraken.http.app import create_app
from kraken.http.errors import ErrorTable, JsonError, json_error
from kraken.http.names import check_namespace
from kraken.http.peers import ClusterPeers
from kraken.http.server import Site, site
from kraken.http.tls import ClientAuth
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.config import OriginConfig
from kraken.origin.remote import RemoteUnavailable, parse_remote
from kraken.origin.service import Fetching, NotFound, OriginService, SeedError
from kraken.store.cas import DigestMismatch, UploadOffsetMismatch, UploadUnknown, UploadWriteError

COMPONENT = "origin"
log = get_logger(COMPONENT)

SERVICE: web.AppKey[OriginService] = web.AppKey("origin_service", OriginService)
PEERS: web.AppKey[ClusterPeers] = web.AppKey("origin_peers", ClusterPeers)

BODY_CHUNK = 1 << 20
FILE_CHUNK = 256 << 10

#: The origin's exceptions -> HTTP status (docs/CONTRACTS.md, "origin").
ERRORS: ErrorTable = {
    DigestError: 400,
    DigestMismatch: 400,  # "digest mismatch: claimed ..., content is ..."
    Fetching: (202, "blob is being fetched from the storage backend"),
    NotFound: 404,
    UploadUnknown: (404, "unknown upload {error}"),
    UploadOffsetMismatch: 416,
    UploadWriteError: (507, "{error}; the upload was removed, start again"),
    EmptyBlobError: (422, "no metainfo for an empty blob: {error}"),
    BackendError: (503, "storage backend unavailable: {error}"),
    ReadOnlyBackend: (405, "{error}"),
    SeedError: 503,
}


def _svc(request: web.Request) -> OriginService:
    return request.app[SERVICE]


def _digest(request: web.Request) -> Digest:
    return Digest.parse(request.match_info["digest"])


def _is_replica(request: web.Request) -> bool:
    return request.query.get("replica") == "true"


async def _peers_only(request: web.Request, what: str) -> None:
    """403 unless the caller is a cluster peer (or on this host)."""
    address = peer_address(request)
    if not await request.app[PEERS].allows(address):
        log.warning("refused: not a cluster peer", peer=str(address), method=request.method, path=request.path)
        raise JsonError(403, f"{what} is for the origin cluster's hosts only; {address} is not one")


async def start_upload(request: web.Request) -> web.Response:
    ns, digest = request.match_info["ns"], _digest(request)
    replica = _is_replica(request)
    if replica:
        await _peers_only(request, "a replica upload")
    uid = await _svc(request).start_upload(ns, digest, replica)
    if uid is None:
        return json_error(409, "blob exists")
    return web.Response(status=200, headers={"Location": uid})


async def start_stream(request: web.Request) -> web.Response:
    """An upload whose digest is not known yet (it is named at commit): lets a proxy stream a
    client's bytes here while they arrive instead of after the client's last byte."""
    uid = await _svc(request).start_stream()
    return web.Response(status=200, headers={"Location": uid})


async def patch_upload(request: web.Request) -> web.Response:
    if "digest" in request.match_info:
        _digest(request)
    uid = request.match_info["uid"]
    # "start-end" (end exclusive) or "start-" (a stream of unknown length).
    header = request.headers.get("Content-Range")
    start = end = None
    if header is not None:
        try:
            start, end = parse_content_range(header)
        except ValueError as e:
            return json_error(400, str(e))
    try:
        size = await _svc(request).write(uid, request.content.iter_chunked(BODY_CHUNK), start)
    except (aiohttp.ClientPayloadError, ConnectionError) as e:
        log.info("upload interrupted", upload=uid, error=f"{type(e).__name__}: {e}")
        return json_error(400, "upload body interrupted")
    if end is not None and size != end:
        return json_error(400, f"body ended at {size}, Content-Range said {end}")
    return web.Response(status=200, headers={"Range": f"0-{size}"})


async def commit_upload(request: web.Request) -> web.Response:
    ns, digest = request.match_info["ns"], _digest(request)
    replica = _is_replica(request)
    if replica:
        await _peers_only(request, "a replica upload")
    created = await _svc(request).commit(ns, digest, request.match_info["uid"], replica)
    if not created:
        return json_error(409, "blob exists")
    return web.Response(status=201)


async def commit_stream(request: web.Request) -> web.Response:
    ns = request.match_info["ns"]
    digest = Digest.parse(request.query.get("digest", ""))
    created = await _svc(request).commit(ns, digest, request.match_info["uid"], replica=False)
    return web.Response(status=201) if created else json_error(409, "blob exists")


async def abort_stream(request: web.Request) -> web.Response:
    await _svc(request).store.abort(request.match_info["uid"])
    return web.Response(status=204)


async def get_blob(request: web.Request) -> web.StreamResponse:
    """GET (and HEAD): the blob, with Range support; 202 while it is fetched from the backend.

    When the blob is not cached and the backend cannot be asked, GET answers 503 (readers
    retry) but HEAD answers 404: HEAD is the existence check before a push, and a push must
    go ahead while the backend is down. A HEAD's 200 for a cached blob means a write-back to
    the namespace's backend is queued, as for an upload: the client will not upload it there.
    """
    svc, digest = _svc(request), _digest(request)
    try:
        path = await svc.find(request.match_info["ns"], digest, existence_check=request.method == "HEAD")
    except BackendError as e:
        if request.method != "HEAD":
            raise
        log.warning("blob not cached and backend unavailable", digest=digest, error=str(e))
        return web.Response(status=404)
    svc.store.touch(digest)
    return await _send_blob(request, path)


async def _send_blob(request: web.Request, path: Path) -> web.StreamResponse:
    """The cached file, sent as a client transfer: background work waits meanwhile
    (kraken.origin.foreground)."""
    response = web.FileResponse(path, chunk_size=FILE_CHUNK)
    if request.method == "GET":
        with _svc(request).foreground.transfer():
            await response.prepare(request)
    return response


async def prefetch_blob(request: web.Request) -> web.Response:
    """Kraken's prefetch: bring the blob into this origin's cache before anyone reads it (the
    proxy's preheat asks each owner of an image's blobs). 200 ``{"digest", "size"}`` once it
    is cached, 202 while it is fetched from the backend (ask again), 404 when the backend
    lacks it, 503 when the fetch failed. Idempotent: a cached blob costs one lookup."""
    svc, digest = _svc(request), _digest(request)
    await svc.find(request.match_info["ns"], digest)
    return web.json_response({"digest": str(digest), "size": svc.store.size(digest)})


async def head_local_blob(request: web.Request) -> web.Response:
    """HEAD from the local cache only: never starts a backend fetch."""
    size = _svc(request).store.size(_digest(request))
    if size is None:
        return web.Response(status=404)
    return web.Response(status=200, headers={"Content-Length": str(size)})


async def get_local_blob(request: web.Request) -> web.StreamResponse:
    """GET from the local cache only (verified first), never starting a backend fetch: how a
    ring owner whose backend copy is corrupt gets a good copy from another owner."""
    svc, digest = _svc(request), _digest(request)
    path = await svc.store.verified_path(digest)
    if path is None:
        return json_error(404, f"{digest} not cached here")
    svc.store.touch(digest)
    return await _send_blob(request, path)


async def get_metainfo(request: web.Request) -> web.Response:
    """The blob's torrent; answering it starts seeding the blob (see OriginService.metainfo)."""
    data = await _svc(request).metainfo(request.match_info["ns"], _digest(request))
    return web.Response(body=data, content_type="application/x-bittorrent")


async def locations(request: web.Request) -> web.Response:
    owners = _svc(request).owners(_digest(request))
    return web.Response(status=200, headers={"Origin-Locations": ",".join(owners)})


async def replicate_to_remote(request: web.Request) -> web.Response:
    """Copy the blob to the origin cluster named in the path (kraken.origin.remote): 202 while
    this origin fetches it from its backend or the copy runs (poll again), 200 with the remote
    origin that took it, 404 if no copy exists, 503 if the remote cluster did not take it. For
    herd hosts, or any caller holding the cluster's client certificate: it makes this origin
    send data to the address it is given."""
    if not request.get_extra_info("peercert"):
        await _peers_only(request, "copying a blob to a remote cluster")
    svc, ns, digest = _svc(request), request.match_info["ns"], _digest(request)
    try:
        remote = parse_remote(request.match_info["remote"])
    except ValueError as e:
        return json_error(400, str(e))
    path = await svc.find(ns, digest)
    svc.store.touch(digest)
    try:
        owner = svc.remote_copies.request(ns, digest, path, remote)
    except RemoteUnavailable as e:
        return json_error(503, str(e))
    if owner is None:
        return web.json_response({"status": "copying"}, status=202)
    return web.json_response({"remote_origin": owner})


async def force_cleanup(request: web.Request) -> web.Response:
    """Evict blobs idle for ``ttl_hr`` hours (0: all) whose write-back has succeeded."""
    await _peers_only(request, "forcecleanup")
    try:
        ttl_hr = float(request.query.get("ttl_hr", "0"))
    except ValueError:
        return json_error(400, "ttl_hr must be a number of hours")
    if ttl_hr < 0:
        return json_error(400, "ttl_hr must not be negative")
    evicted = await _svc(request).cleanup.evict(ttl_hr * 3600)
    return web.json_response({"evicted": [str(d) for d in evicted]})


def create_origin_app(config: OriginConfig) -> web.Application:
    metrics = Metrics(COMPONENT)
    service = OriginService(config, metrics)
    app = create_app(COMPONENT, metrics, readiness=service.readiness, errors=ERRORS)
    app[SERVICE] = service
    app[PEERS] = ClusterPeers(config.ring.hosts)
    app.middlewares.append(check_namespace)
    app.cleanup_ctx.append(service.lifecycle)

    # [\s\S], not ".": a namespace with a newline must reach check_namespace (400), not miss (404).
    blob = r"/namespace/{ns:[\s\S]+}/blobs/{digest}"
    app.router.add_post(f"{blob}/uploads", start_upload)
    app.router.add_patch(f"{blob}/uploads/{{uid}}", patch_upload)
    app.router.add_put(f"{blob}/uploads/{{uid}}", commit_upload)
    app.router.add_get(blob, get_blob)  # also HEAD
    app.router.add_post(f"{blob}/prefetch", prefetch_blob)
    stream = r"/namespace/{ns:[\s\S]+}/uploads"
    app.router.add_post(stream, start_stream)
    app.router.add_patch(f"{stream}/{{uid}}", patch_upload)
    app.router.add_put(f"{stream}/{{uid}}", commit_stream)
    app.router.add_delete(f"{stream}/{{uid}}", abort_stream)
    app.router.add_head(f"/internal{blob}", head_local_blob)
    app.router.add_get(f"/internal{blob}", get_local_blob, allow_head=False)
    app.router.add_get(f"/internal{blob}/metainfo", get_metainfo)
    app.router.add_post(f"{blob}/remote/{{remote}}", replicate_to_remote)
    app.router.add_get("/blobs/{digest}/locations", locations)
    app.router.add_post("/forcecleanup", force_cleanup)
    return app


def sites(config: OriginConfig) -> list[Site]:
    return [site(create_origin_app(config), config.listen, config.tls, ClientAuth.REQUIRED)]
