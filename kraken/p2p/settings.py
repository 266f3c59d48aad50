"""The libtorrent session itself: its settings, its creation and its teardown.

Settings applied to every session, each for a measured reason: several connections per IP
(dev peers share 127.0.0.1 and libtorrent would otherwise collapse them); TCP only (uTP
moved ~7 MB/s on loopback); no DHT/LSD/UPnP/NAT-PMP (the tracker is the peer source);
``min_announce_interval`` from the config (libtorrent floors the tracker's interval at
300 s); a peer-class filter putting every address in the global class (libtorrent exempts
loopback and private ranges from rate limits and unchoke slots by default); a 50 ms tick
(rate-limit quota is handed out per tick); piece priorities obeyed from the first piece
and for fast peers too (:mod:`kraken.p2p.shares` relies on them); no smart_ban plugin (it
blames corrupt blocks by IP address, which banned the origin where peers share one); a
listen port that fails when taken instead of silently moving; with ``p2p.tls`` that port is an SSL one, and the only one
(:mod:`kraken.p2p.tls`).

Creating the session spawns libtorrent's threads and binds sockets, and destroying it joins
those threads: both run in a worker thread. :class:`NativeSession` holds the only reference
to the session, so that its destructor runs in that worker thread and not on the event loop.
"""
from __future__ import annotations

import asyncio
from typing import Literal

import libtorrent as lt

from kraken.p2p.config import P2PConfig

Role = Literal["agent", "origin"]

#: Peer ids of sessions started with ``role="origin"`` start with this (see :mod:`kraken.p2p.stats`).
ORIGIN_PEER_ID_PREFIX = b"-KO"
_PEER_FINGERPRINTS: dict[str, str] = {"origin": "-KO0100-", "agent": "-KA0100-"}

_CATEGORY = lt.alert.category_t
_ALERT_MASK = (
    _CATEGORY.error_notification
    | _CATEGORY.status_notification
    | _CATEGORY.tracker_notification
    | _CATEGORY.connect_notification
    | _CATEGORY.peer_notification
    | _CATEGORY.storage_notification
    | _CATEGORY.piece_progress_notification  # piece_finished: kraken.p2p.piecereads
)
#: How long close() lets "stopped" announces take: best effort, the tracker expires peers anyway.
STOP_TRACKER_TIMEOUT = 2
# libtorrent hands out rate-limit quota once per tick, and every message of a rate-limited
# connection waits for quota. Measured with a 2 MiB/s cap, 6 MiB took 4.5 s at the default
# 500 ms tick, 3.6 s at 100 ms and 3.0 s at 50 ms; idle CPU with 200 seeding torrents went
# from 0.10% to 0.17%.
_TICK_INTERVAL_MS = 50


def _peer_class_filter() -> lt.ip_filter:
    """Every IPv4 and IPv6 address in the global peer class, so rate limits apply to all."""
    f = lt.ip_filter()
    global_class = 1 << lt.session.global_peer_class_id
    f.add_rule("0.0.0.0", "255.255.255.255", global_class)
    f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", global_class)
    return f


def session_settings(config: P2PConfig, role: Role) -> lt.settings_pack:
    """The settings of a session with this config and role: a dict, which the binding converts
    to a ``settings_pack`` (its type stubs name only the pack)."""
    return {
        "listen_interfaces": config.listen_interfaces(),
        "listen_system_port_fallback": False,
        "max_retry_port_bind": 0,
        "allow_multiple_connections_per_ip": True,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": int(_ALERT_MASK),
        "alert_queue_size": config.alert_queue_size,
        "min_announce_interval": int(config.min_announce_interval),
        "upload_rate_limit": config.upload_rate_limit,
        "download_rate_limit": config.download_rate_limit,
        "max_queued_disk_bytes": config.max_queued_disk_bytes,
        "peer_fingerprint": _PEER_FINGERPRINTS[role],
        "stop_tracker_timeout": STOP_TRACKER_TIMEOUT,
        "tick_interval": _TICK_INTERVAL_MS,
        "request_queue_time": max(1, round(config.request_queue_time)),
        # A peer dropped for the connection limit (a single-piece download's one connection,
        # see kraken.p2p.torrents) may be dialled again after 1 s, not libtorrent's 60: with
        # 60, an agent whose one slot went to another leecher kept its origin out until the
        # HTTP fallback (30 s; measured with two agents pulling the same manifest at once).
        "min_reconnect_time": 1,
        # Piece priorities decide what a downloader asks the origin for (kraken.p2p.shares).
        # libtorrent overrides them in two cases, both off here: for a peer that could send a
        # whole piece within whole_pieces_threshold (20 s) seconds it requests runs of adjacent
        # pieces (the origin got a neighbour of every share piece: 1.45 copies and 1.55 x T_min
        # against 1.08 and 1.19 without, 4 agents, 256 MiB, 20 MiB/s), and for the first
        # initial_picker_threshold (4) pieces it picks at random.
        "whole_pieces_threshold": 0,
        "initial_picker_threshold": 0,
    }


class NativeSession:
    """The only reference to the process's ``lt.session``; :meth:`destroy` drops it off the loop."""

    def __init__(self, session: lt.session) -> None:
        self._session: lt.session | None = session

    def get(self) -> lt.session:
        """The session; only valid until :meth:`destroy`."""
        assert self._session is not None, "the libtorrent session is destroyed"
        return self._session

    async def destroy(self) -> None:
        """Drop the session in a worker thread: its destructor joins libtorrent's threads."""
        holder = [self.get()]
        self._session = None
        await asyncio.to_thread(_drop, holder)


def _drop(holder: list[lt.session]) -> None:
    """Take the last reference out of ``holder`` and let it go here, in the worker thread
    (``holder.pop`` would hand it back to the loop as the call's result)."""
    holder.pop()


def create_session(config: P2PConfig, role: Role) -> tuple[NativeSession, int, list[str]]:
    """Build the session (spawns threads, binds sockets): runs in a worker thread.

    Returns the session, its listen port (0 when nothing could be bound) and the messages of
    the alerts raised so far (listen failures explain a port of 0).
    """
    # Default plugins minus smart_ban: it blames a corrupt block on the first peer with the
    # sender's IP address, and where peers share an address (loopback, NAT) it banned the
    # origin, stalling the download until its timeout (measured). Without it libtorrent still
    # bans corrupt senders, per peer, after failed pieces.
    session = lt.session(session_settings(config, role), 0)
    for plugin in ("ut_metadata", "ut_pex"):
        session.add_extension(plugin)
    session.set_peer_class_filter(_peer_class_filter())
    port = 0
    if session.is_listening():
        port = session.ssl_listen_port() if config.tls.enabled else session.listen_port()
    messages = [a.message() for a in session.pop_alerts() if isinstance(a, lt.listen_failed_alert)]
    return NativeSession(session), port, messages
