"""Manifests (``/v2/<name>/manifests/<tag|digest>``): read, and push with full validation.

A pushed manifest is stored only if it parses, matches the digest in the URL, and every blob
and child manifest it references is already in the repository; only then is it stored (as a
blob of the repository) and the tag pointed at it. So a tag never names an image that cannot
be pulled.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from kraken.core.digest import Digest
from kraken.http.files import send_file
from kraken.registry.accept import accepts, merged_accept
from kraken.registry.context import RegistryContext, absolute_url
from kraken.registry.errors import RegistryError
from kraken.registry.manifest import Manifest, ManifestError, parse_manifest
from kraken.registry.names import parse_reference

STAT_CONCURRENCY = 16


async def read_manifest(ctx: RegistryContext, request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """Sent from a local file (kraken.http.files): a client that reads slowly, or not at all,
    holds no copy of the manifest in this process's memory."""
    ref = parse_reference(reference)
    digest = ref.digest or await ctx.storage.get_tag(name, ref.tag)
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
    missing = await _missing_references(ctx, name, manifest)
    if missing:
        raise RegistryError.combine(
            RegistryError("MANIFEST_BLOB_UNKNOWN", detail={"digest": str(d)}) for d in missing
        )
    await ctx.storage.put_blob_bytes(name, digest, raw)
    if ref.tag is not None:
        await ctx.storage.put_tag(name, ref.tag, digest)
    return web.Response(status=201, headers={
        "Location": absolute_url(request, f"/v2/{name}/manifests/{digest}"),
        "Docker-Content-Digest": str(digest),
        "Content-Length": "0",
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


async def _missing_references(ctx: RegistryContext, name: str, manifest: Manifest) -> list[Digest]:
    """Referenced blobs and child manifests the repository does not have, in manifest order."""
    digests = list(dict.fromkeys(d.digest for d in manifest.references))
    limit = asyncio.Semaphore(STAT_CONCURRENCY)

    async def present(digest: Digest) -> bool:
        async with limit:
            return await ctx.storage.stat_blob(name, digest) is not None

    found = await asyncio.gather(*(present(d) for d in digests))
    return [d for d, ok in zip(digests, found) if not ok]
