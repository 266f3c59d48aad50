"""Which announces need a cluster client certificate (``announce_requires_certificate``).

The tracker's ``/announce`` accepts connections without a client certificate at the TLS layer
(``CERT_OPTIONAL``, as for every Kraken server), because a host might announce without one; this
decides, per announce, whether a connection that brought no verified certificate is served.
It applies only when the tracker verifies client certificates at all (``tls.server`` and
``tls.cas``); origins and agents present theirs through the announce relay
(:mod:`kraken.p2p.announcerelay`).

- ``seeders`` (the default): an announce with ``left=0`` needs a certificate. A seeder is
  what the tracker sends other hosts to for a blob's pieces, so an uncertified one could draw
  every agent of a swarm to an address of its choosing (a connection and time sink: pieces
  are hash-checked, so it cannot serve bad data). A leecher without one is still served: it
  can only have the info hash from metainfo, which the tracker serves to certified clients
  only, and a host with the cluster CA but no client certificate keeps downloading.
- ``all``: every announce needs one. Right when every host has a client certificate (the
  relay presents it): an uncertified caller then learns no peer addresses and is never
  handed out, not even as a leecher.
- ``none``: announces are open, as before this check.

A ``stopped`` announce that names the connection's own address is always served: it only
removes the caller's own entry. One naming another address (``trust_ip_param`` and an ``ip=``
parameter) needs a certificate under either rule, whatever its ``left``, or an uncertified
caller could remove every seeder of a swarm from the tracker's answers.

A refusal is answered 403 with a bencoded ``failure reason``, counted in
``kraken_tracker_announce_failures_total{reason="no_certificate"}`` and logged at warning the
first time for each peer (address and port; at most :data:`LOGGED_PEERS` remembered, so a
scan cannot grow memory). ``kraken_tracker_announce_certificates_total{certificate}`` counts
the announces the check saw with a verified certificate and without.
"""
from __future__ import annotations

from aiohttp import web

from kraken.core.memo import RecentSet
from kraken.log import get_logger
from kraken.tracker.announce import AnnounceError, AnnounceRequest, peer_ip
from kraken.tracker.config import CertificateRule
from kraken.tracker.metrics import TrackerMetrics

log = get_logger("tracker")

SEEDING_REFUSED = "seeding requires a cluster certificate"
ANNOUNCE_REFUSED = "announcing requires a cluster certificate"
STOP_REFUSED = "removing another address requires a cluster certificate"
LOGGED_PEERS = 4096


class AnnounceAdmission:
    """The certificate check of announces; inactive (admits all) when ``verifies_clients`` is false."""

    def __init__(self, rule: CertificateRule, verifies_clients: bool, metrics: TrackerMetrics) -> None:
        self.rule: CertificateRule = rule if verifies_clients else "none"
        self._metrics = metrics
        self._logged: RecentSet[str] = RecentSet(LOGGED_PEERS)

    def refusal(self, request: web.Request, announce: AnnounceRequest, ip: str) -> str | None:
        """The failure reason to answer ``announce`` with, or ``None`` to serve it."""
        if self.rule == "none":
            return None
        certified = bool(request.get_extra_info("peercert"))
        self._metrics.announce_certificates.labels("verified" if certified else "none").inc()
        if certified:
            return None
        if announce.event == "stopped":
            if ip == _source(request):
                return None
            # A removal ignores left: whatever it says, the entry removed may be a seeder's.
            reason = STOP_REFUSED
        elif self.rule == "seeders" and not announce.complete:
            return None
        else:
            reason = SEEDING_REFUSED if announce.complete else ANNOUNCE_REFUSED
        self._metrics.announce_failures.labels("no_certificate").inc()
        self._log_once(f"{ip}:{announce.port}", announce, reason)
        return reason

    def _log_once(self, peer: str, announce: AnnounceRequest, reason: str) -> None:
        if self._logged.hit(peer):
            return
        self._logged.add(peer)
        log.warning("announce refused: no client certificate", peer=peer, info_hash=announce.info_hash.hex(),
                    left=announce.left, reason=reason)


def _source(request: web.Request) -> str | None:
    """The connection's address, in the form :func:`~kraken.tracker.announce.peer_ip` gives."""
    try:
        return peer_ip(request.remote, None, False)
    except AnnounceError:
        return None
