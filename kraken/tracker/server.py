"""The tracker's HTTP API (see docs/CONTRACTS.md, "tracker"): routes mapped onto TrackerService.

``GET /announce`` (any path under ``/announce`` too: libtorrent's SSRF mitigation only lets
loopback trackers use such paths) speaks the BitTorrent tracker protocol; its errors are
bencoded ``failure reason`` dictionaries (400 for a malformed announce, 403 without the
client certificate ``announce_requires_certificate`` asks for, see
:mod:`kraken.tracker.admission`, 503 when the peer store is down, which clients retry, 429
beyond the announcing address's torrent limit and 503 beyond the tracker's total, see
:mod:`kraken.tracker.peerstore`).
``GET /namespace/{ns}/blobs/{d}/metainfo`` answers like the origin's internal metainfo
endpoint, errors as ``{"error"}`` (:mod:`kraken.http.errors`).
"""
from __future__ import annotations

from aiohttp import web

from kraken.core.digest import Digest, DigestError
from kraken.http.app import create_app
from kraken.http.errors import ErrorTable, json_error
from kraken.http.names import check_namespace
from kraken.http.server import Site, site
from kraken.http.tls import ClientAuth
from kraken.metrics import Metrics
from kraken.tracker.admission import AnnounceAdmission
from kraken.tracker.announce import AnnounceError, encode_failure, parse_announce, peer_ip
from kraken.tracker.config import TrackerConfig
from kraken.tracker.metrics import TrackerMetrics
from kraken.tracker.peerstore import AnnounceRefused, PeerStoreError
from kraken.tracker.protocol import SLOT_HEADER
from kraken.tracker.service import TrackerService

COMPONENT = "tracker"

BENCODED = "text/plain"  # what BitTorrent trackers customarily send; clients ignore it
TORRENT = "application/x-bittorrent"

#: The tracker's exceptions -> HTTP status, outside the announce (whose errors are bencoded).
ERRORS: ErrorTable = {
    DigestError: 400,
    PeerStoreError: (503, "peer store unavailable: {error}"),
}


def create_tracker_app(config: TrackerConfig) -> web.Application:
    metrics = Metrics(COMPONENT)
    tracker_metrics = TrackerMetrics(metrics)
    service = TrackerService(config, tracker_metrics)
    admission = AnnounceAdmission(config.announce_requires_certificate, config.tls.verifies_clients,
                                  tracker_metrics)
    app = create_app(
        COMPONENT, metrics, readiness=service.readiness, quiet_routes=("/announce", "/announce/{tail}"),
        errors=ERRORS,
    )
    app.middlewares.append(check_namespace)
    app.cleanup_ctx.append(service.lifecycle)

    async def announce(request: web.Request) -> web.Response:
        try:
            parsed = parse_announce(request.rel_url.raw_query_string)
            ip = peer_ip(request.remote, parsed.ip, config.trust_ip_param)
        except AnnounceError as e:
            tracker_metrics.announce_failures.labels("invalid").inc()
            return web.Response(status=400, body=encode_failure(str(e)), content_type=BENCODED)
        refusal = admission.refusal(request, parsed, ip)
        if refusal is not None:
            return web.Response(status=403, body=encode_failure(refusal), content_type=BENCODED)
        try:
            body = await service.announce(parsed, ip)
        except PeerStoreError as e:
            tracker_metrics.announce_failures.labels("store").inc()
            return web.Response(status=503, body=encode_failure(f"peer store unavailable: {e}"),
                                content_type=BENCODED)
        except AnnounceRefused as e:
            tracker_metrics.announce_failures.labels(f"limit_{e.scope}").inc()
            return web.Response(status=429 if e.scope == "ip" else 503, body=encode_failure(str(e)),
                                content_type=BENCODED)
        return web.Response(body=body, content_type=BENCODED)

    async def metainfo(request: web.Request) -> web.Response:
        digest = Digest.parse(request.match_info["digest"])
        answer = await service.metainfo(request.match_info["ns"], digest)
        if answer.status == 200:
            return web.Response(body=answer.body, content_type=TORRENT,
                                headers={SLOT_HEADER: str(service.swarm_slots.next(digest))})
        # The origin's own error (passed on) or the tracker's account of the origins.
        return json_error(answer.status, answer.message)

    app.router.add_get("/announce", announce)
    app.router.add_get("/announce/{tail:.*}", announce)
    app.router.add_get("/namespace/{ns:.+}/blobs/{digest}/metainfo", metainfo)
    return app


def sites(config: TrackerConfig) -> list[Site]:
    """With mTLS, ``/announce`` stays open at the TLS layer and in the 403 middleware: which
    announces need a certificate is :mod:`kraken.tracker.admission`'s decision, answered in
    the BitTorrent protocol (docs/SECURITY.md)."""
    return [site(create_tracker_app(config), config.listen, config.tls, ClientAuth.REQUIRED,
                 open_routes=("/announce", "/announce/"))]
