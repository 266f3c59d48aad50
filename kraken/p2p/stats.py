"""The session's metrics and the accounting behind them: which source each downloaded byte
came from, bytes uploaded, and the activity that keeps a seed from being removed as idle.

Metrics (registered on the given :class:`~kraken.metrics.Metrics`, one session per registry):
``kraken_p2p_download_bytes_total{source}`` (origin|peer),
``kraken_p2p_upload_bytes_total``, ``kraken_p2p_download_seconds``,
``kraken_p2p_downloads_total{result}`` (complete|timeout|error),
``kraken_p2p_active_torrents``, ``kraken_p2p_hash_failures_total``.

Attribution of downloaded bytes to origins or other agents: see
:mod:`kraken.p2p.attribution`; each download is sampled by a task of its own, first after
:data:`_FIRST_SAMPLE_DELAY` and then at doubling intervals up to ``stats_interval``. A
connection is an origin's when its ``ip:port`` is in ``set_origin_addresses`` or its peer id
starts with :data:`~kraken.p2p.settings.ORIGIN_PEER_ID_PREFIX` (sessions started with
``role="origin"`` use that prefix); the second also covers connections an origin opened
itself, whose remote port is ephemeral. Upload counters come from ``state_update`` alerts.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import libtorrent as lt
from prometheus_client import Counter, Gauge, Histogram

from kraken.log import KrakenLogger
from kraken.metrics import Metrics
from kraken.p2p.alerts import AlertHandler
from kraken.p2p.attribution import ORIGIN, PEER, SOURCES, PeerSample
from kraken.p2p.config import P2PConfig
from kraken.p2p.settings import ORIGIN_PEER_ID_PREFIX
from kraken.p2p.torrents import Torrent, TorrentTable
from kraken.tasks import TaskOwner

# Delay before the first per-peer sample of a download (then doubling to stats_interval).
_FIRST_SAMPLE_DELAY = 0.01
# How long a single-piece download may receive nothing on its one connection before it is
# opened to more peers (checked at each attribution sample, so about 0.6 s in practice).
_SINGLE_PIECE_GRACE = 0.5
# libtorrent::errors::self_connection (its error enum is part of the ABI).
_SELF_CONNECTION = 47


def endpoint(ip: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of libtorrent's ``(host, port)`` pair."""
    host, port = ip
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class P2PMetrics:
    """The session's metrics (see the module docstring)."""

    download_bytes: Counter
    upload_bytes: Counter
    download_seconds: Histogram
    downloads: Counter
    active: Gauge
    hash_failures: Counter

    @classmethod
    def register(cls, metrics: Metrics) -> P2PMetrics:
        download_bytes = metrics.counter(
            "kraken_p2p_download_bytes_total", "Payload bytes downloaded, by source", ["source"]
        )
        for source in SOURCES:
            download_bytes.labels(source)
        return cls(
            download_bytes=download_bytes,
            upload_bytes=metrics.counter("kraken_p2p_upload_bytes_total", "Payload bytes uploaded to peers"),
            download_seconds=metrics.histogram(
                "kraken_p2p_download_seconds", "Time from adding a torrent to having it complete on disk"
            ),
            downloads=metrics.counter("kraken_p2p_downloads_total", "Downloads by outcome", ["result"]),
            active=metrics.gauge("kraken_p2p_active_torrents", "Torrents in the session (downloading or seeding)"),
            hash_failures=metrics.counter("kraken_p2p_hash_failures_total", "Pieces that failed their hash check"),
        )


class Stats:
    """Byte accounting: samples downloads' connections, counts uploads, attributes sources."""

    def __init__(
        self, config: P2PConfig, metrics: P2PMetrics, torrents: TorrentTable, tasks: TaskOwner, log: KrakenLogger
    ) -> None:
        self._config = config
        self.metrics = metrics
        self._torrents = torrents
        self._tasks = tasks
        self._log = log
        self._origin_addresses: frozenset[str] = frozenset()

    def set_origin_addresses(self, addresses: set[str]) -> None:
        self._origin_addresses = frozenset(addresses)

    def source(self, ip: Any, pid: lt.sha1_hash) -> str:
        """ORIGIN or PEER: who is at the other end of a connection."""
        if endpoint(ip) in self._origin_addresses or pid.to_bytes().startswith(ORIGIN_PEER_ID_PREFIX):
            return ORIGIN
        return PEER

    def sample_peers(self, handle: lt.torrent_handle) -> list[PeerSample]:
        """Open connections of a torrent; waits for libtorrent's network thread (worker thread only)."""
        return [
            PeerSample(endpoint(p.ip), self.source(p.ip, p.pid), p.total_download, float(p.payload_down_speed))
            for p in handle.get_peer_info()
        ]

    def snapshot(self, handle: lt.torrent_handle) -> tuple[list[PeerSample], lt.torrent_status]:
        """Open connections and status of a torrent (worker thread only)."""
        return self.sample_peers(handle), handle.status()

    def count_download(self, added: dict[str, int]) -> None:
        for source, n in added.items():
            if n:
                self.metrics.download_bytes.labels(source).inc(n)

    def account_upload(self, rec: Torrent, total_payload_upload: int) -> None:
        """Count what the torrent uploaded since last time; uploading is activity."""
        delta = total_payload_upload - rec.uploaded
        if delta > 0:
            self.metrics.upload_bytes.inc(delta)
            rec.uploaded = total_payload_upload
            rec.last_activity = time.monotonic()

    def start_sampling(self, rec: Torrent) -> None:
        """Sample the download until it completes (or is removed, which cancels the sampler)."""
        rec.sampler = self._tasks.spawn(self._sample_loop(rec), f"sample:{rec.info_hash[:12]}")

    async def _sample_loop(self, rec: Torrent) -> None:
        """Attribute a download's bytes to sources while it runs (cancelled at completion).

        The first samples come quickly and the interval doubles up to ``stats_interval``, so
        even a download of a fraction of a second is mostly sampled rather than estimated.
        """
        interval = _FIRST_SAMPLE_DELAY
        progress = rec.added
        while True:
            await asyncio.sleep(interval)
            interval = min(interval * 2, self._config.stats_interval)
            try:
                samples = await asyncio.to_thread(self.sample_peers, rec.handle)
            except RuntimeError:  # removed meanwhile
                return
            added = rec.attribution.observe(samples)
            self.count_download(added)
            now = time.monotonic()
            if any(added.values()):
                progress = now
            elif rec.narrow and now - progress >= _SINGLE_PIECE_GRACE:
                rec.widen(self._config.connections_per_torrent)
                self._log.info("single-piece download opened to more peers", name=rec.name,
                               info_hash=rec.info_hash, stalled=round(now - progress, 3))

    # ---------------------------------------------------------------- alerts

    def alert_handlers(self) -> dict[type, AlertHandler]:
        return {
            lt.peer_disconnected_alert: self._on_peer_disconnected,
            lt.state_update_alert: self._on_state_update,
        }

    def _on_peer_disconnected(self, alert: lt.peer_disconnected_alert) -> None:
        rec = self._torrents.of(alert)
        if rec is None:
            return
        peer = endpoint(alert.ip)
        source = self.source(alert.ip, alert.pid)
        self._log.info("peer disconnected", name=rec.name, peer=peer, source=source, reason=alert.error.message())
        # Connections that never finished the handshake (no peer id) or that reached this
        # very session (PEX on a shared IP) carried no payload: keep them out of the estimate.
        carried_payload = not alert.pid.is_all_zeros() and not (
            alert.error.category().name() == "libtorrent" and alert.error.value() == _SELF_CONNECTION
        )
        if not rec.seeding and carried_payload:
            rec.attribution.closed(peer, source)

    def _on_state_update(self, alert: lt.state_update_alert) -> None:
        for status in alert.status:
            rec = self._torrents.for_handle(status.handle)
            if rec is not None:
                self.account_upload(rec, status.total_payload_upload)
