"""The BitTorrent HTTP tracker protocol (BEP 3, compact peers BEP 23, ``peers6`` BEP 7).

``info_hash`` and ``peer_id`` are raw bytes percent-encoded in the query string; they are
decoded from the raw query string (``request.rel_url.raw_query_string``) with
:func:`urllib.parse.unquote_to_bytes`, because a UTF-8 decoding (aiohttp's ``request.query``)
would mangle them, and ``request.query_string`` is already percent-decoded once (a hash byte
``%`` followed by two hex digits would be decoded twice). ``+`` is left alone: clients
percent-encode every byte outside the unreserved set, so a literal ``+`` is a ``+``.

Answers always use the compact peer list: with the dictionary form libtorrent resolves each
IP string asynchronously and its first connection waits for its next 1 s tick. The
parameters ``uploaded``, ``downloaded``, ``corrupt``, ``key``, ``compact``, ``no_peer_id``,
``supportcrypto`` and ``redundant`` are accepted and ignored.
"""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from socket import AF_INET, AF_INET6, inet_pton
from urllib.parse import unquote, unquote_to_bytes

from kraken.core.bencode import Bencodable, bencode
from kraken.tracker.peerstore import PeerAddr

# "paused" (BEP 21) is a plain re-announce here.
EVENTS = frozenset({"started", "completed", "stopped", "paused", ""})
HASH_LEN = 20


class AnnounceError(ValueError):
    """A malformed announce; the message is the ``failure reason`` sent back."""


@dataclass(frozen=True)
class AnnounceRequest:
    info_hash: bytes
    peer_id: bytes
    port: int
    left: int
    event: str
    numwant: int | None
    ip: str | None

    @property
    def complete(self) -> bool:
        return self.left == 0


#: The parameters an announce is read for; the others are not even decoded.
USED = frozenset({"info_hash", "peer_id", "port", "left", "event", "numwant", "ip"})


def parse_query(query_string: str, names: frozenset[str] | None = None) -> dict[str, bytes]:
    """Query parameters (only ``names``, if given) as raw bytes; the first of repeated names wins."""
    params: dict[str, bytes] = {}
    for part in query_string.split("&"):
        if part:
            name, _, value = part.partition("=")
            if "%" in name:
                name = unquote(name)
            if (names is None or name in names) and name not in params:
                params[name] = unquote_to_bytes(value)
    return params


def parse_announce(query_string: str) -> AnnounceRequest:
    params = parse_query(query_string, USED)
    info_hash = _required(params, "info_hash")
    peer_id = _required(params, "peer_id")
    if len(info_hash) != HASH_LEN:
        raise AnnounceError(f"info_hash must be {HASH_LEN} bytes, got {len(info_hash)}")
    if len(peer_id) != HASH_LEN:
        raise AnnounceError(f"peer_id must be {HASH_LEN} bytes, got {len(peer_id)}")
    port = _number(params, "port")
    if not 0 < port < 65536:
        raise AnnounceError(f"port {port} out of range")
    event = params.get("event", b"").decode(errors="replace")
    if event not in EVENTS:
        raise AnnounceError(f"unknown event {event!r}")
    return AnnounceRequest(
        info_hash=info_hash,
        peer_id=peer_id,
        port=port,
        left=_number(params, "left"),
        event=event,
        numwant=_number(params, "numwant") if "numwant" in params else None,
        ip=params["ip"].decode(errors="replace") if "ip" in params else None,
    )


def _required(params: dict[str, bytes], name: str) -> bytes:
    value = params.get(name)
    if value is None:
        raise AnnounceError(f"missing {name}")
    return value


def _number(params: dict[str, bytes], name: str) -> int:
    value = _required(params, name)
    if not value.isdigit():
        raise AnnounceError(f"{name} must be a non-negative integer")
    return int(value)


def peer_ip(remote: str | None, claimed: str | None, trust_claimed: bool) -> str:
    """The address other peers should dial: the request's source, or the ``ip`` parameter
    when the tracker is configured to trust it (clients behind a known NAT or proxy). An
    IPv4-mapped IPv6 source is given as plain IPv4, so it fits the compact list."""
    source = claimed if trust_claimed and claimed is not None else remote
    if source is None:
        raise AnnounceError("cannot tell the peer's address")
    try:
        ip = ipaddress.ip_address(source)
    except ValueError:
        raise AnnounceError(f"ip {source!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def compact(peers: list[PeerAddr]) -> tuple[bytes, bytes]:
    """(``peers``: 6 bytes per IPv4 peer, ``peers6``: 18 bytes per IPv6 peer). Addresses are
    packed with ``inet_pton``, not :mod:`ipaddress` (ten times slower, and an answer packs up
    to ``max_peers_returned`` of them); the store holds only addresses :func:`peer_ip` or an
    origin's resolution produced, so every one packs."""
    v4, v6 = [], []
    for peer in peers:
        port = peer.port.to_bytes(2, "big")
        try:
            v4.append(inet_pton(AF_INET, peer.ip) + port)
        except OSError:
            v6.append(inet_pton(AF_INET6, peer.ip) + port)
    return b"".join(v4), b"".join(v6)


def encode_peers(interval: float, seeders: int, leechers: int, peers: list[PeerAddr]) -> bytes:
    """A successful announce answer. ``interval`` is whole seconds on the wire (at least 1)."""
    seconds = max(1, math.ceil(interval))
    v4, v6 = compact(peers)
    answer: dict[bytes | str, Bencodable] = {
        "interval": seconds, "min interval": seconds, "complete": seeders, "incomplete": leechers, "peers": v4,
    }
    if v6:
        answer["peers6"] = v6
    return bencode(answer)


def encode_failure(reason: str) -> bytes:
    return bencode({"failure reason": reason})
