"""The proxy's second server (Kraken's :15005, the ``server:`` section): preheat on request.

- ``POST /registry/notifications``: distribution's notification envelope
  (``{"events": [{"action": "push", "target": {"mediaType", "digest", "repository", "tag",
  "url"}}]}``; Kraken's Go decoder reads the keys in any case, and Harbor's Kraken driver
  sends ``Events``/``Target``/``MediaType``, so keys match case-insensitively). Each push of
  an image manifest, manifest list or index starts a preheat job (kraken.proxy.preheat_jobs);
  other events (pulls, blob pushes, deletes) are ignored, as a notifier sends every event to
  every endpoint. A malformed envelope is refused with 400 (the notifier would otherwise
  resend it forever, but it is a bug to see, not to swallow).
- ``POST /proxy/v1/registry/prefetch`` and ``/proxy/v2/...``: Kraken's prefetch call,
  ``{"tag": "<host>/<repository>:<tag>", "trace_id": "..."}``; the tag is resolved through
  build-index (404 when it is unknown) and the image is preheated the same way. Kraken's v1
  answers at once and prefetches behind, its v2 once every blob's fetch has been triggered;
  here both answer once the job exists, which ``GET /preheat/<id>`` follows.
- ``GET /preheat/<id>`` (and ``GET /preheat``: the newest jobs): a job's state and progress.

Every route but ``/health`` answers only callers in ``server.allowed_cidrs``; with
``server.token`` the write routes also require ``Authorization: Bearer <token>``.
"""
from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from kraken.core.digest import Digest, DigestError
from kraken.core.names import is_valid_name, is_valid_tag
from kraken.http.allow import AllowList, guard
from kraken.http.app import COMPONENT, METRICS, create_app
from kraken.http.client import HTTPStatusError
from kraken.http.errors import JsonError
from kraken.http.server import Site, site
from kraken.log import get_logger
from kraken.proxy.config import PreheatServerConfig, ProxyConfig
from kraken.proxy.preheat_jobs import JobsFull, PreheatJob, PreheatJobs
from kraken.proxy.storage import ProxyStorage
from kraken.registry.manifest import SUPPORTED_MANIFESTS

log = get_logger("proxy")

JOBS: web.AppKey[PreheatJobs] = web.AppKey("preheat_jobs", PreheatJobs)
#: Jobs listed by ``GET /preheat`` at most.
LIST_LIMIT = 100
#: A notification envelope (or prefetch call) larger than this is refused (413).
MAX_BODY = 1 << 20


def preheat_site(config: ProxyConfig, server: PreheatServerConfig, storage: ProxyStorage,
                 proxy_app: web.Application) -> Site:
    """The second server, over the proxy's own clients and metrics (``proxy_app``'s): served
    with the same ``http:`` limits and ``tls:`` as the registry port, no client certificate
    asked (the registry and Harbor have none of Kraken's)."""
    metrics = proxy_app[METRICS]
    app = create_app(proxy_app[COMPONENT], metrics, client_max_size=MAX_BODY)
    jobs = PreheatJobs(server, metrics, lambda: storage.origins, lambda: storage.http,
                       config.max_manifest_size, config.max_manifest_references)
    app[JOBS] = jobs
    guard(app, AllowList(server.allowed_cidrs, metrics, name="server.allowed_cidrs"),
          lambda address: JsonError(403, f"{address} is not in the proxy's server.allowed_cidrs"))
    token = server.token.reveal() if server.token is not None else None

    def authorized(request: web.Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise JsonError(401, "a bearer token (server.token) is required",
                            headers={"WWW-Authenticate": 'Bearer realm="kraken-proxy-preheat"'})

    async def notifications(request: web.Request) -> web.Response:
        authorized(request)
        events, ignored = push_events(await _json_body(request))
        submitted = [_submit(jobs, repo, digest, tag, "notification") for repo, digest, tag in events]
        return web.json_response({"jobs": [job.to_json() for job in submitted], "ignored": ignored})

    async def prefetch(request: web.Request) -> web.Response:
        authorized(request)
        body = await _json_body(request)
        trace_id = str(_field(body, "trace_id") or "")
        raw_tag = _field(body, "tag")
        if not isinstance(raw_tag, str):
            raise _prefetch_error(400, 'the body needs "tag": "<host>/<repository>:<tag>"', trace_id)
        repo, tag = parse_prefetch_tag(raw_tag, trace_id)
        try:
            digest = await storage.build_index.get_tag(f"{repo}:{tag}")
        except (HTTPStatusError, aiohttp.ClientError, TimeoutError) as e:
            raise _prefetch_error(503, f"build-index cannot resolve {repo}:{tag}: {e}", trace_id) from None
        if digest is None:
            raise _prefetch_error(404, f"no tag {repo}:{tag}", trace_id)
        job = _submit(jobs, repo, digest, tag, "prefetch")
        return web.json_response({"tag": raw_tag, "prefetched": True, "status": "success",
                                  "message": "prefetching initiated successfully", "trace_id": trace_id,
                                  "job": job.to_json()})

    async def get_job(request: web.Request) -> web.Response:
        job = jobs.get(request.match_info["id"])
        if job is None:
            raise JsonError(404, f"no preheat job {request.match_info['id']} (finished jobs are forgotten "
                                 "beyond server.max_jobs)")
        return web.json_response(job.to_json())

    async def list_jobs(_: web.Request) -> web.Response:
        return web.json_response({"jobs": [job.to_json() for job in jobs.recent(LIST_LIMIT)]})

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        yield
        await jobs.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/registry/notifications", notifications)
    app.router.add_post("/proxy/v1/registry/prefetch", prefetch)
    app.router.add_post("/proxy/v2/registry/prefetch", prefetch)
    app.router.add_get("/preheat", list_jobs)
    app.router.add_get("/preheat/{id}", get_job)
    log.info("preheat server configured", port=server.listen.port, allowed=",".join(server.allowed_cidrs),
             token=token is not None)
    return site(app, server.listen, config.tls)


def _submit(jobs: PreheatJobs, repo: str, digest: Digest, tag: str, source: str) -> PreheatJob:
    try:
        return jobs.submit(repo, digest, tag, source)
    except JobsFull as e:
        raise JsonError(503, str(e), headers={"Retry-After": "30"}) from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise JsonError(400, f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise JsonError(400, "the body must be a JSON object")
    return body


def _field(obj: dict[str, Any], name: str) -> Any:
    """``obj[name]`` with the key in any case (as Go's encoding/json matches them)."""
    if name in obj:
        return obj[name]
    wanted = name.lower()
    return next((value for key, value in obj.items() if key.lower() == wanted), None)


def push_events(body: dict[str, Any]) -> tuple[list[tuple[str, Digest, str]], int]:
    """``(repository, manifest digest, tag)`` of each manifest push in a notification
    envelope, and how many events were ignored. Raises a 400 :class:`JsonError` for an
    envelope that is not one, or a manifest push whose target is unusable."""
    events = _field(body, "events")
    if not isinstance(events, list):
        raise JsonError(400, 'not a notification envelope: no "events" list')
    pushes: list[tuple[str, Digest, str]] = []
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise JsonError(400, f"events[{i}] is not an object")
        target = _field(event, "target")
        if not isinstance(target, dict):
            raise JsonError(400, f'events[{i}] has no "target" object')
        media_type = str(_field(target, "mediaType") or "").split(";")[0].strip()
        if _field(event, "action") != "push" or media_type not in SUPPORTED_MANIFESTS:
            continue
        repo, tag = _field(target, "repository"), _field(target, "tag") or ""
        if not isinstance(repo, str) or not is_valid_name(repo):
            raise JsonError(400, f"events[{i}].target.repository is not a repository name: {str(repo)[:256]!r}")
        if not isinstance(tag, str) or (tag and not is_valid_tag(tag)):
            raise JsonError(400, f"events[{i}].target.tag is not a tag: {str(tag)[:256]!r}")
        try:
            digest = Digest.parse(str(_field(target, "digest") or ""))
        except DigestError as e:
            raise JsonError(400, f"events[{i}].target.digest: {e}") from None
        pushes.append((repo, digest, tag))
    return pushes, len(events) - len(pushes)


def parse_prefetch_tag(value: str, trace_id: str) -> tuple[str, str]:
    """``<host>/<repository>:<tag>`` -> ``(repository, tag)``. Kraken's parser takes the
    second and third path segments (``host/ns/name:tag``); a repository of any depth is
    accepted here."""
    host, _, rest = value.partition("/")
    repo, _, tag = rest.rpartition(":")
    if not host or not is_valid_name(repo) or not is_valid_tag(tag):
        raise _prefetch_error(400, f"tag {value[:256]!r} is not <host>/<repository>:<tag>", trace_id)
    return repo, tag


def _prefetch_error(status: int, message: str, trace_id: str) -> JsonError:
    """Kraken's prefetch error fields (``prefetched``, ``trace_id``) beside this project's
    ``{"error"}``."""
    return JsonError(status, message, prefetched=False, trace_id=trace_id)
