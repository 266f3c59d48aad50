"""Client of the build-index HTTP API (used by the proxy, agents and replication)."""
from __future__ import annotations

import json
from urllib.parse import quote

from kraken.core.digest import Digest
from kraken.http.client import HttpClient, HTTPStatusError
from kraken.http.errors import error_extra, error_message
from kraken.registry.referrer_index import ReferrerDescriptor

#: A referrers answer is bounded by build-index's ``max_referrers`` x ``max_referrer_size``
#: (4 MiB by default); a body past this is refused rather than read into memory.
MAX_REFERRERS_BODY = 64 << 20


class TagReferenceError(Exception):
    """build-index refused a tag (HTTP 400): the manifest references content the origins lack
    (``missing`` lists it), or the tag, digest or manifest is invalid (``missing`` is empty)."""

    def __init__(self, message: str, missing: list[Digest]) -> None:
        super().__init__(message)
        self.missing = missing


class ReferrerRefused(Exception):
    """build-index refused a referrer: ``limit`` is True for a full list or an oversized
    descriptor (HTTP 403), False for an invalid or missing manifest (HTTP 400)."""

    def __init__(self, message: str, limit: bool) -> None:
        super().__init__(message)
        self.limit = limit


class BuildIndexClient:
    def __init__(self, addr: str, http: HttpClient) -> None:
        self.base = http.base(addr)
        self.http = http

    async def put_tag(self, tag: str, digest: Digest, *, replicate: bool = False) -> None:
        """Point ``tag`` (``repo:tag``) at manifest ``digest``; returns once it is durable.
        ``replicate``: also copy it to the remote clusters whose ``remotes`` match it."""
        url = f"{self.base}/tags/{quote(tag, safe=':')}/digest/{digest}"
        try:
            resp = await self.http.request("PUT", url, params={"replicate": "true"} if replicate else None)
        except HTTPStatusError as e:
            if e.status != 400:
                raise
            raise _reference_error(e.body) from None
        resp.release()

    async def get_tag(self, tag: str) -> Digest | None:
        """The digest ``tag`` points at, or ``None`` if there is no such tag."""
        resp = await self.http.request("GET", f"{self.base}/tags/{quote(tag, safe=':')}", ok=(200, 404))
        try:
            if resp.status == 404:
                return None
            return Digest.parse((await resp.text()).strip())
        finally:
            resp.release()

    async def list_repository(self, repo: str) -> list[str]:
        """Tag names (without ``repo:``) of ``repo``, sorted."""
        return await self._get_result(f"{self.base}/repositories/{quote(repo, safe='')}/tags")

    async def list_prefix(self, prefix: str) -> list[str]:
        """Every ``repo:tag`` whose name starts with ``prefix``, sorted."""
        return await self._get_result(f"{self.base}/list/{quote(prefix, safe=':')}")

    async def put_referrer(self, repo: str, subject: Digest, referrer: Digest) -> None:
        """Record manifest ``referrer`` (already on the origins) as a referrer of ``subject``."""
        url = f"{self.base}/referrers/{quote(repo, safe='')}/{subject}/{referrer}"
        try:
            resp = await self.http.request("PUT", url)
        except HTTPStatusError as e:
            if e.status not in (400, 403):
                raise
            raise ReferrerRefused(e.message or "refused", limit=e.status == 403) from None
        resp.release()

    async def list_referrers(self, repo: str, subject: Digest) -> list[ReferrerDescriptor]:
        """The referrers of ``subject`` in ``repo`` (``[]`` when none). An oversized or
        malformed answer is an upstream failure (HTTPStatusError 502), like a 5xx."""
        url = f"{self.base}/referrers/{quote(repo, safe='')}/{subject}"
        resp = await self.http.request("GET", url)
        try:
            body = bytearray()
            async for chunk in resp.content.iter_any():
                body += chunk
                if len(body) > MAX_REFERRERS_BODY:
                    raise HTTPStatusError("GET", url, 502, f"answer over {MAX_REFERRERS_BODY} bytes")
        finally:
            resp.release()
        try:
            return [ReferrerDescriptor.from_json(d) for d in json.loads(body)["manifests"]]
        except (ValueError, KeyError, TypeError) as e:
            raise HTTPStatusError("GET", url, 502, f"malformed referrers answer: {e}") from None

    async def _get_result(self, url: str) -> list[str]:
        resp = await self.http.request("GET", url)
        try:
            return list((await resp.json())["result"])
        finally:
            resp.release()


def _reference_error(body: str) -> TagReferenceError:
    """build-index's 400 ``{"error", "missing"}`` (any other body: nothing known missing)."""
    try:
        missing = [Digest.parse(d) for d in error_extra(body).get("missing", [])]
    except (ValueError, TypeError):
        missing = []
    return TagReferenceError(error_message(body) or "tag refused", missing)
