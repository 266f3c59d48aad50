"""The tracker's own Prometheus metrics (beside the per-route HTTP metrics every app has)."""
from __future__ import annotations

from kraken.http.healthcheck import RingMetrics
from kraken.metrics import Metrics


class TrackerMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.ring = RingMetrics(metrics)
        self.announces = metrics.counter(
            "kraken_tracker_announces_total", "Announces served, by event (none = a periodic re-announce)", ["event"]
        )
        self.announce_failures = metrics.counter(
            "kraken_tracker_announce_failures_total",
            "Announces refused: invalid request, peer store down (store), beyond the address's or the "
            "total torrent limit (limit_ip, limit_total), no client certificate where one is required "
            "(no_certificate)",
            ["reason"],
        )
        self.announce_certificates = metrics.counter(
            "kraken_tracker_announce_certificates_total",
            "Announces checked for a client certificate (announce_requires_certificate with mTLS): the "
            "connection brought a verified cluster certificate (verified) or none",
            ["certificate"],
        )
        self.peers_returned = metrics.counter(
            "kraken_tracker_peers_returned_total",
            "Peers handed out, by class (seeder, origin, leecher, unconfirmed: seeders not probed OK)", ["class"]
        )
        self.metainfo_cache = metrics.counter(
            "kraken_tracker_metainfo_cache_total", "Metainfo requests answered from the cache (hit) or not (miss)",
            ["result"],
        )
        self.origin_errors = metrics.counter(
            "kraken_tracker_origin_errors_total",
            "Failed metainfo calls to origins: unreachable, status (an unexpected HTTP status), invalid metainfo",
            ["kind"],
        )
