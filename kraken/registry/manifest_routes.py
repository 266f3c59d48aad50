"""Manifests (``/v2/<name>/manifests/<tag|digest>``): read, and push with full validation.

A pushed manifest is stored only if the whole push can succeed: it parses, matches the digest
in the URL, has no more references than allowed, every blob and child manifest it references
is in the repository (checked recursively, kraken.registry.references, with the pushed bytes
standing in for the manifest itself), and, for a push by tag, the tag store answers. Only then
is it stored (as a blob of the repository) and the tag pointed at it. So a refused push leaves
nothing pullable behind, and a tag never names an image that cannot be pulled.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from kraken.core.digest import Digest
from kraken.http.files import send_file
from kraken.registry.accept import accepts, merged_accept
from kraken.registry.context import RegistryContext, absolute_url
from kraken.registry.errors import RegistryError
from kraken.registry.manifest import ManifestError, parse_manifest
from kraken.registry.names import parse_reference
from kraken.registry.references import InvalidManifest, PushedRoot, find_missing
from kraken.registry.referrers import record_referrer, referrer_of_push
from kraken.registry.storage import RegistryStorage


async def read_manifest(ctx: RegistryContext, request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """Sent from a local file (kraken.http.files): a client that reads slowly, or not at all,
    holds no copy of the manifest in this process's memory."""
    ref = parse_reference(reference)
    digest = ref.digest if ref.tag is None else await ctx.storage.get_tag(name, ref.tag)
    if digest is None:
        raise RegistryError("MANIFEST_UNKNOWN", detail={"name": name, "reference": reference})
    f = await ctx.storage.open_manifest(name, digest, ctx.max_manifest_size)
    if f is None:
        raise RegistryError("MANIFEST_UNKNOWN", detail={"name": name, "reference": reference})
    with f:
        media_type, size = await ctx.manifests.check(f, digest)
        accepted = merged_accept(request.headers.getall("Accept", []))
        if not accepts(accepted, media_type):
            raise RegistryError("MANIFEST_UNKNOWN", detail={
                "reason": f"the manifest is {media_type}, which the Accept header does not allow",
            })
        headers = {
            "Content-Type": media_type,
            "Docker-Content-Digest": str(digest),
            "ETag": f'"{digest}"',
        }
        if request.method == "HEAD":
            return web.Response(status=200, headers={**headers, "Content-Length": str(size)})
        return await send_file(request, f, size, headers)


async def put_manifest(ctx: RegistryContext, request: web.Request, name: str, reference: str) -> web.Response:
    ctx.require_writable()
    ref = parse_reference(reference)
    raw = await _read_limited(request, ctx.max_manifest_size)
    try:
        manifest = parse_manifest(raw, request.headers.get("Content-Type"))
    except ManifestError as e:
        raise RegistryError("MANIFEST_INVALID", detail=str(e)) from None
    digest = manifest.digest
    if ref.digest is not None:
        if Digest.of_bytes(raw, ref.digest.algorithm) != ref.digest:
            raise RegistryError("DIGEST_INVALID", detail=f"manifest content is {digest}, URL says {ref.digest}")
        digest = ref.digest
    source = PushedRoot(_RepositorySource(ctx.storage, name), digest, raw)
    try:
        missing = await find_missing(
            source, digest, max_manifest_size=ctx.max_manifest_size, max_references=ctx.max_references,
            root_media_type=manifest.media_type,
        )
    except InvalidManifest as e:
        raise RegistryError("MANIFEST_INVALID", detail=str(e)) from None
    if missing is not None:
        raise RegistryError("MANIFEST_BLOB_UNKNOWN", detail={"digest": str(missing)})
    referrer = referrer_of_push(raw, digest, request.headers.get("Content-Type"))
    if ref.tag is not None or referrer is not None:
        await ctx.storage.check_tags_writable()  # build-index keeps tags and referrers
    await ctx.storage.put_blob_bytes(name, digest, raw)
    subject = await record_referrer(ctx, name, digest, referrer)
    if ref.tag is not None:
        await ctx.storage.put_tag(name, ref.tag, digest)
    return web.Response(status=201, headers={
        "Location": absolute_url(request, f"/v2/{name}/manifests/{digest}"),
        "Docker-Content-Digest": str(digest),
        "Content-Length": "0",
        **subject,
    })


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The request body, refusing (413) one larger than ``limit`` without reading it all."""
    too_big = RegistryError(
        "SIZE_INVALID", message="manifest too big", status=413, detail={"limit": limit},
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


class _RepositorySource:
    """A repository of a registry storage as the source reference checks read."""

    def __init__(self, storage: RegistryStorage, repo: str) -> None:
        self._storage = storage
        self._repo = repo

    async def stat(self, digest: Digest) -> int | None:
        return await self._storage.stat_blob(self._repo, digest)

    async def read(self, digest: Digest, max_size: int) -> bytes | None:
        f = await self._storage.open_manifest(self._repo, digest, max_size)
        if f is None:
            return None
        try:
            return await asyncio.to_thread(f.read, max_size + 1)
        finally:
            await asyncio.to_thread(f.close)
