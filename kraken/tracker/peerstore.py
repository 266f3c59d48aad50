"""Who is in which swarm: the peer store interface shared by the memory and Redis stores.

A peer is keyed by (info_hash, ip, port): libtorrent's peer_id is random per torrent, so it
identifies nothing across announces of a restarted client, while the address is what other
peers connect to. Each entry records its peer_id, whether the peer has the whole blob, and
when it last announced; an entry not refreshed within the store's TTL is gone.

The store also remembers which blob (digest) a torrent is: the tracker learns that from the
metainfo it serves, and needs it to offer the blob's owning origins to announcers. That
mapping lives as long as the torrent sees announces (each announce refreshes it).

Both stores enforce :class:`~kraken.tracker.config.LimitsConfig` the same way: one IP address
keeps at most ``peers_per_ip`` peers in a torrent (a new one evicts that address's least
recently seen: a restarted agent on a new port is never locked out), and an announce that
would add a torrent beyond ``torrents_per_ip`` for its address or ``torrents`` in all is
refused with :class:`AnnounceRefused`. A torrent counts while it has been announced within
the TTL. Origins (``exempt``) are not held to the per-address limits: one seeds every blob
agents ask for.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from kraken.core.digest import Digest


class PeerAddr(NamedTuple):
    """A tuple, not a dataclass: an announce hashes and compares a hundred or so of them
    (samples, handout exclusions), and a tuple does that in C."""

    ip: str
    port: int


@dataclass(frozen=True)
class Peer:
    addr: PeerAddr
    peer_id: bytes
    complete: bool


@dataclass
class Swarm:
    """A random sample of a torrent's live peers by class, the class sizes, and its blob.

    Each sample is in random order (the handout keeps that order, so load spreads over a
    class without a second shuffle) and may include the announcing peer itself; the handout
    drops it.
    """

    seeders: list[Peer] = field(default_factory=list)
    leechers: list[Peer] = field(default_factory=list)
    num_seeders: int = 0
    num_leechers: int = 0
    digest: Digest | None = None


class PeerStoreError(Exception):
    """The store could not be asked (e.g. Redis unreachable): the announce cannot be served."""


class AnnounceRefused(Exception):
    """An announce beyond a limit: ``scope`` is ``ip`` (this address's torrents) or ``total``."""

    def __init__(self, scope: Literal["ip", "total"], limit: int) -> None:
        what = "torrents announced from this address" if scope == "ip" else "torrents tracked"
        super().__init__(f"too many {what} (limit {limit})")
        self.scope = scope


class PeerStore(ABC):
    """Swarm membership with expiry. Methods raise :class:`PeerStoreError` when unavailable."""

    @abstractmethod
    async def announce(self, info_hash: bytes, peer: Peer, sample: int, *, exempt: bool = False) -> Swarm:
        """Record ``peer`` as seen now (in the class its ``complete`` flag says) and return up
        to ``sample`` random live peers of each class, with the torrent's digest if known.
        Raises :class:`AnnounceRefused` beyond the limits (``exempt``: not the per-address ones)."""

    @abstractmethod
    async def leave(self, info_hash: bytes, addr: PeerAddr) -> Swarm:
        """Forget the peer at ``addr``; the answer has the class sizes but no samples."""

    @abstractmethod
    async def set_digest(self, info_hash: bytes, digest: Digest) -> None:
        """Remember that the torrent ``info_hash`` is the blob ``digest`` (for one TTL)."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot be used (readiness)."""

    async def start(self) -> None:  # noqa: B027 - most stores have no background work
        """Start background work, if the store has any."""

    @abstractmethod
    async def close(self) -> None:
        """Stop background work and release connections."""
