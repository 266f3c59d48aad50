"""Prometheus metrics: one registry per application, served at ``/metrics``.

A registry per app (not the global default) lets tests run several components in one
process without "duplicated timeseries" errors.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The metrics of one component; components add their own with :meth:`counter` etc."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.registry = CollectorRegistry()
        self.http_requests = self.counter(
            "kraken_http_requests_total", "HTTP requests served", ["method", "route", "status"]
        )
        self.http_latency = self.histogram(
            "kraken_http_request_duration_seconds", "HTTP request latency", ["method", "route"]
        )
        # Connection limits of the HTTP servers (kraken.http.server), by listening port.
        self.http_connections_open = self.gauge(
            "kraken_http_connections_open", "Open HTTP connections", ["port"])
        self.http_connections_refused = self.counter(
            "kraken_http_connections_refused_total", "Connections closed at once: max_connections reached", ["port"])
        self.http_connections_dropped = self.counter(
            "kraken_http_connections_dropped_total", "Connections dropped by a timeout, by reason", ["port", "reason"])

    def counter(self, name: str, doc: str, labels: list[str] | tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: list[str] | tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(
        self, name: str, doc: str, labels: list[str] | tuple[str, ...] = (), buckets: tuple = LATENCY_BUCKETS
    ) -> Histogram:
        return Histogram(name, doc, labels, registry=self.registry, buckets=buckets)
