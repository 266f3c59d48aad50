"""The OCI referrers API on the registry: ``GET /v2/<name>/referrers/<digest>``, and the
``OCI-Subject`` answer to a manifest push that names a subject.

The list itself lives wherever the storage keeps it (build-index, for the proxy and the
agents), so every registry answers the same list; this module only derives descriptors,
filters and renders. The answer is 200 with an image index even for a subject nobody refers
to (or that does not exist): the spec lets a referrer be pushed before its subject.
"""
from __future__ import annotations

from aiohttp import web

from kraken.core.digest import Digest
from kraken.log import get_logger
from kraken.registry.context import RegistryContext
from kraken.registry.errors import RegistryError
from kraken.registry.manifest import OCI_INDEX, ManifestError
from kraken.registry.names import parse_digest
from kraken.registry.referrer_index import ReferrerDescriptor, referrer_of, referrers_index

log = get_logger("kraken.registry")

SUBJECT_HEADER = "OCI-Subject"
FILTERS_HEADER = "OCI-Filters-Applied"
ARTIFACT_TYPE = "artifactType"


async def list_referrers(ctx: RegistryContext, request: web.Request, name: str, subject: str) -> web.Response:
    """The referrers of ``subject`` in ``name``, filtered by ``?artifactType=`` (repeatable)
    when given, which the ``OCI-Filters-Applied`` header then says."""
    digest = parse_digest(subject)
    descriptors = await ctx.storage.referrers(name, digest)
    headers = {"Content-Type": OCI_INDEX}
    wanted = set(request.query.getall(ARTIFACT_TYPE, []))
    if wanted:
        descriptors = [d for d in descriptors if d.artifact_type in wanted]
        headers[FILTERS_HEADER] = ARTIFACT_TYPE
    return web.Response(status=200, body=referrers_index(descriptors), headers=headers)


def referrer_of_push(raw: bytes, digest: Digest, content_type: str | None) -> tuple[Digest, ReferrerDescriptor] | None:
    """The subject and descriptor of a pushed manifest that names a subject (None otherwise);
    MANIFEST_INVALID for a malformed ``subject``, ``artifactType`` or ``annotations``. Called
    before the manifest is stored, so a push refused for them leaves nothing behind."""
    try:
        return referrer_of(raw, digest, content_type)
    except ManifestError as e:
        raise RegistryError("MANIFEST_INVALID", detail=str(e)) from None


async def record_referrer(
    ctx: RegistryContext, name: str, digest: Digest, found: tuple[Digest, ReferrerDescriptor] | None
) -> dict[str, str]:
    """After manifest ``digest`` is stored: if it has a subject (``found``, from
    :func:`referrer_of_push`), add it to that subject's referrers and return the ``OCI-Subject``
    header for the push's answer (``{}`` otherwise, or when the storage keeps no referrers,
    which tells clients to fall back to the tag schema)."""
    if found is None:
        return {}
    subject, descriptor = found
    if not await ctx.storage.add_referrer(name, subject, descriptor):
        return {}
    log.info("referrer recorded", repo=name, subject=subject, referrer=digest,
             artifact_type=descriptor.artifact_type or "")
    return {SUBJECT_HEADER: str(subject)}
