"""Configuration of a process's BitTorrent session (``p2p:`` in the agent and origin configs).

Every setting here maps onto one libtorrent setting or one behaviour of
:class:`kraken.p2p.session.P2PSession`; the reasons for the values libtorrent needs that are
not configurable (TCP only, one peer class, ...) are in :mod:`kraken.p2p.settings`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kraken.config import ByteSize, Duration, ListenConfig
from kraken.http.config import SecretFile

AGENT_P2P_PORT = 16001
ORIGIN_P2P_PORT = 15001


@dataclass
class P2PTLSConfig:
    """``p2p.tls``: pieces travel over libtorrent's SSL torrents (docs/SECURITY.md, "Piece
    traffic").

    ``enabled``: origins embed ``ca`` in every torrent they generate, and the session takes
    only SSL torrents rooted at that CA, presents ``cert`` to every peer (announces go through the
    announce relay, which presents ``tls.client``) and listens for peers over TLS only, on ``p2p.listen``.

    ``cert``/``key``/``passphrase``: this host's peer certificate, in ``tls.client``'s shape.
    libtorrent accepts a peer whose certificate is signed **directly** by ``ca`` (no
    intermediate) and names the torrent in a ``DNS:`` SAN: torrents are named after a blob's
    digest, so the certificate must carry ``DNS:*``.

    ``ca``: the self-signed CA embedded in the torrents; empty means the component's first
    ``tls.cas`` entry. Every origin of a cluster must embed the same CA: it is part of the
    info-hash, and agents refuse a torrent rooted elsewhere.
    """

    enabled: bool = False
    cert: SecretFile = field(default_factory=SecretFile)
    key: SecretFile = field(default_factory=SecretFile)
    passphrase: SecretFile = field(default_factory=SecretFile)
    ca: SecretFile = field(default_factory=SecretFile)

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not (self.cert.path and self.key.path):
            raise ValueError("enabled needs cert and key (the peer certificate, with SAN DNS:*)")

    def resolve(self, cas: list[SecretFile]) -> None:
        """Default ``ca`` to the component's first ``tls.cas`` entry (a component config calls
        this when it is loaded). The files themselves are checked when the P2P session starts
        (:func:`kraken.p2p.tls.check_files`): a config may be checked before they are made."""
        if self.enabled and not self.ca.path:
            if not cas:
                raise ValueError("p2p.tls: enabled needs p2p.tls.ca or the component's tls.cas")
            self.ca = SecretFile(cas[0].path)


@dataclass
class P2PConfig:
    """One process's P2P session.

    ``listen``: where peers connect (``{host: 0.0.0.0, port: 16001}``; port 0 picks a free
    port, which the tracker learns from the announce). A taken port fails at start instead
    of libtorrent's default of silently binding another one, because origins are known to
    agents by their P2P address.

    ``peer_ip``: this host's address as other peers see it. The tracker takes the address
    from the announce's source IP, so this only labels log lines (``local=``).

    ``upload_rate_limit`` / ``download_rate_limit``: bytes per second for the whole session,
    0 = unlimited. They apply to every peer, loopback and private ranges included.

    ``connections_per_torrent``: peer connections per torrent (Kraken uses about 10).

    ``seed_idle_time``: a complete torrent that has uploaded nothing for this long is removed
    from the session (its file is left alone); 0 keeps seeding until ``remove()``.

    ``min_announce_interval``: floor on the tracker's re-announce interval (libtorrent's
    default floor is 300 s, which would hide the tracker's few-second interval).

    ``stats_interval``: how often upload counters, idle seeding and per-source download
    attribution are refreshed.

    ``max_queued_disk_bytes``: received bytes waiting to be written per session; it caps a
    downloader's memory (16 MiB measured as fast as libtorrent's 100 MiB default).

    ``request_queue_time``: how many seconds of transfer (at the rate a peer has been sending)
    a downloader keeps requested from that peer. libtorrent's default is 3 s; 1 s keeps agents
    from reserving pieces at a rate-limited origin long before it can send them, which in the
    fan-out benchmark cut the origin's duplicate uploads (1.36 -> 1.27 copies) and the time
    (1.45 -> 1.36 x T_min). Whole seconds, at least 1.

    ``tls``: piece traffic over TLS (:class:`P2PTLSConfig`).

    ``alert_queue_size``: libtorrent's alert queue. Alerts are drained as soon as libtorrent
    signals them, so this only needs headroom for event-loop stalls; an overflow is logged
    and pending downloads are re-checked, never lost.
    """

    listen: ListenConfig = field(default_factory=lambda: ListenConfig(host="0.0.0.0", port=AGENT_P2P_PORT))
    peer_ip: str = ""
    upload_rate_limit: ByteSize = 0
    download_rate_limit: ByteSize = 0
    connections_per_torrent: int = 10
    seed_idle_time: Duration = 300.0
    min_announce_interval: Duration = 2.0
    stats_interval: Duration = 1.0
    max_queued_disk_bytes: ByteSize = 16 << 20
    alert_queue_size: int = 10000
    request_queue_time: Duration = 1.0
    tls: P2PTLSConfig = field(default_factory=P2PTLSConfig)

    def __post_init__(self) -> None:
        for limit in (self.upload_rate_limit, self.download_rate_limit):
            if not 0 <= limit < 1 << 31:
                raise ValueError("rate limits must be >= 0 (0 = unlimited) and below 2GiB/s (libtorrent's int)")
        if self.connections_per_torrent < 2:
            raise ValueError("connections_per_torrent must be at least 2")
        if self.seed_idle_time < 0:
            raise ValueError("seed_idle_time must be >= 0 (0 = seed until removed)")
        if self.min_announce_interval < 1:
            raise ValueError("min_announce_interval must be at least 1s (libtorrent counts whole seconds)")
        if self.stats_interval <= 0:
            raise ValueError("stats_interval must be > 0")
        if self.max_queued_disk_bytes < 1 << 20:
            raise ValueError("max_queued_disk_bytes must be at least 1MiB")
        if self.request_queue_time < 1:
            raise ValueError("request_queue_time must be at least 1s (libtorrent counts whole seconds)")
        if self.alert_queue_size < 1:
            raise ValueError("alert_queue_size must be >= 1")
        if not 0 <= self.listen.port < 65536:
            raise ValueError(f"listen.port {self.listen.port} is not a TCP port")

    def listen_interfaces(self) -> str:
        """libtorrent's ``listen_interfaces`` value (IPv6 hosts in brackets); with ``tls`` the
        port is an SSL one (the ``s`` suffix) and the only one: peers of an SSL torrent talk
        only SSL, and the port stays the one the tracker hands out for an origin."""
        host = self.listen.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.listen.port}{'s' if self.tls.enabled else ''}"
