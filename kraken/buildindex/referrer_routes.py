"""build-index's referrer endpoints (the storage behind the OCI referrers API).

* ``PUT /referrers/{repo}/{subject}/{referrer}``: record manifest ``referrer`` as a referrer of
  ``subject``. No body: build-index reads the manifest from the origins (like a tag PUT), checks
  its bytes against ``referrer``, and derives the descriptor itself, so nobody can list a
  referrer that is not on the origins or whose type and annotations are not its manifest's.
  200; 400 ``{"error", "missing": [...]}`` (``missing`` is ``[referrer]`` when the origins lack
  it, ``[]`` for an invalid manifest, one without that subject, or a malformed name or digest);
  403 ``{"error", "limit"}`` when the subject's list is full or the descriptor too big.
* ``GET /referrers/{repo}/{subject}``: ``{"manifests": [descriptor, ...]}``, sorted by digest,
  ``[]`` for a subject without referrers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from kraken.buildindex.referrerstore import ReferrerLimit, ReferrerStore
from kraken.buildindex.tags import TagError, validate_repo
from kraken.core.digest import Digest, DigestError
from kraken.http.errors import JsonError
from kraken.log import get_logger
from kraken.metrics import Metrics
from kraken.origin.client import BlobNotFound
from kraken.registry.manifest import ManifestError, parse_manifest
from kraken.registry.referrer_index import ReferrerDescriptor, referrer_of

if TYPE_CHECKING:
    from kraken.buildindex.server import BuildIndex

log = get_logger("build-index")


class _Refused(Exception):
    """A refused PUT: ``result`` labels the metric, the rest is the JSON answer."""

    def __init__(self, result: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.result = result
        self.extra = extra

    def response(self) -> JsonError:
        return JsonError(403 if self.result == "limit" else 400, str(self), **self.extra)


class ReferrerRoutes:
    def __init__(self, server: BuildIndex, metrics: Metrics) -> None:
        self.server = server
        self.puts = metrics.counter(
            "kraken_buildindex_referrer_puts_total",
            "Referrer PUTs by result (ok, invalid, missing, limit)", ["result"])

    @property
    def store(self) -> ReferrerStore:
        """Stateless (the backend holds everything), so it is built on the started app's router."""
        return ReferrerStore(self.server.router, self.server.config.max_referrers)

    @staticmethod
    def _parse(request: web.Request, *keys: str) -> tuple[str, list[Digest]]:
        try:
            repo = validate_repo(request.match_info["repo"])
            return repo, [Digest.parse(request.match_info[k]) for k in keys]
        except (TagError, DigestError) as e:
            raise _Refused("invalid", str(e), missing=[]) from None

    async def put(self, request: web.Request) -> web.Response:
        try:
            repo, (subject, referrer) = self._parse(request, "subject", "referrer")
            descriptor = await self._descriptor(repo, subject, referrer)
            try:
                await self.store.put(repo, subject, descriptor)
            except ReferrerLimit as e:
                raise _Refused("limit", str(e), limit=self.server.config.max_referrers) from None
        except _Refused as e:
            self.puts.labels(e.result).inc()
            log.warning("referrer refused", path=request.path, result=e.result, error=str(e))
            raise e.response() from None
        self.puts.labels("ok").inc()
        return web.Response(status=200)

    async def _descriptor(self, repo: str, subject: Digest, referrer: Digest) -> ReferrerDescriptor:
        config = self.server.config
        origins = self.server.origins
        size = await origins.stat(repo, referrer)
        if size is not None and size > config.max_manifest_size:
            raise _Refused("invalid", f"manifest {referrer} is {size} bytes, over the "
                                      f"{config.max_manifest_size} byte limit", missing=[])
        try:
            raw = None if size is None else await origins.read_bytes(repo, referrer)
        except BlobNotFound:
            raw = None
        if raw is None:
            raise _Refused("missing", f"manifest {referrer} is not on the origins", missing=[str(referrer)])
        if Digest.of_bytes(raw, referrer.algorithm) != referrer:
            raise _Refused("invalid", f"manifest {referrer}: content does not match its digest", missing=[])
        try:
            parse_manifest(raw)
            found = referrer_of(raw, referrer)
        except ManifestError as e:
            raise _Refused("invalid", f"manifest {referrer}: {e}", missing=[]) from None
        if found is None or found[0] != subject:
            raise _Refused("invalid", f"manifest {referrer} does not have subject {subject}", missing=[])
        descriptor = found[1]
        if len(descriptor.encode()) > config.max_referrer_size:
            raise _Refused("limit", f"descriptor of referrer {referrer} is over the {config.max_referrer_size} "
                                    "byte limit (annotations too big)", limit=config.max_referrer_size)
        return descriptor

    async def list(self, request: web.Request) -> web.Response:
        try:
            repo, (subject,) = self._parse(request, "subject")
        except _Refused as e:
            raise e.response() from None
        descriptors = await self.store.list(repo, subject)
        return web.json_response({"manifests": [d.to_json() for d in descriptors]})


def add_referrer_routes(app: web.Application, server: BuildIndex, metrics: Metrics) -> None:
    routes = ReferrerRoutes(server, metrics)
    app.router.add_put(r"/referrers/{repo:.+}/{subject:[^/]+}/{referrer:[^/]+}", routes.put)
    app.router.add_get(r"/referrers/{repo:.+}/{subject:[^/]+}", routes.list)
