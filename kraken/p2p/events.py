"""The alerts that are only logged: connections, bans, refused TLS handshakes (``p2p.tls``),
tracker trouble, listen failures and libtorrent's performance warnings. Tracker errors are
warnings (they are retried), except a listen socket skipping a tracker it cannot route to,
which is harmless and logged at debug: libtorrent announces from each listen socket, and with a
wildcard listen address only the loopback one reaches the announce relay on 127.0.0.1 (an IPv6
socket likewise skips an IPv4 tracker)."""
from __future__ import annotations

import logging

import libtorrent as lt

from kraken.log import KrakenLogger
from kraken.p2p.alerts import AlertHandler
from kraken.p2p.stats import endpoint
from kraken.p2p.torrents import TorrentTable

#: libtorrent's ``announce_skipped`` error ("skipping tracker announce (unreachable)").
_ANNOUNCE_SKIPPED = ("libtorrent", 180)


class EventLog:
    """Logs the alerts no other part of the session acts on."""

    def __init__(self, torrents: TorrentTable, log: KrakenLogger) -> None:
        self._torrents = torrents
        self._log = log

    def alert_handlers(self) -> dict[type, AlertHandler]:
        return {
            lt.peer_connect_alert: self._on_peer_connect,
            lt.peer_ban_alert: self._on_peer_ban,
            lt.peer_error_alert: self._on_peer_error,
            lt.tracker_error_alert: self._on_tracker_error,
            lt.tracker_warning_alert: self._on_tracker_warning,
            lt.listen_failed_alert: self._on_listen_failed,
            lt.performance_alert: self._on_performance,
        }

    def _on_peer_connect(self, alert: lt.peer_connect_alert) -> None:
        rec = self._torrents.of(alert)
        if rec is not None:
            # No source here: the peer id is only known after the handshake.
            self._log.info("peer connected", name=rec.name, peer=endpoint(alert.ip))

    def _on_peer_ban(self, alert: lt.peer_ban_alert) -> None:
        rec = self._torrents.of(alert)
        self._log.warning("peer banned (sent corrupt data)", name=rec.name if rec else "", peer=endpoint(alert.ip))

    def _on_peer_error(self, alert: lt.peer_error_alert) -> None:
        """A peer of an SSL torrent whose certificate the CA did not sign (or that sent none)
        fails here, before any torrent is known; other peer errors are routine disconnects."""
        if alert.op == lt.operation_t.ssl_handshake:
            self._log.warning("peer refused: TLS handshake failed", peer=endpoint(alert.ip),
                              error=alert.error.message())

    def _on_tracker_error(self, alert: lt.tracker_error_alert) -> None:
        rec = self._torrents.of(alert)
        skipped = (alert.error.category().name(), alert.error.value()) == _ANNOUNCE_SKIPPED
        self._log.log(
            logging.DEBUG if skipped else logging.WARNING,
            "tracker error",
            name=rec.name if rec else alert.torrent_name,
            url=alert.tracker_url(),
            error=alert.error.message(),
            reason=alert.failure_reason(),
            times_in_row=alert.times_in_row,
        )

    def _on_tracker_warning(self, alert: lt.tracker_warning_alert) -> None:
        self._log.warning("tracker warning", name=alert.torrent_name, url=alert.tracker_url(), message=alert.message())

    def _on_listen_failed(self, alert: lt.listen_failed_alert) -> None:
        self._log.error("P2P listen failed", message=alert.message())

    def _on_performance(self, alert: lt.performance_alert) -> None:
        self._log.warning("libtorrent performance warning", message=alert.message())
