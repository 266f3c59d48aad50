"""The in-memory peer store: for a single tracker (the default; development and tests).

Reads ignore entries older than the TTL, so expiry is exact; a periodic sweep frees the
memory of peers and torrents that stopped announcing. Every announce costs the same however
big its swarm (goal 5 of issue 14: thousands of announces per second): each class of a torrent
keeps its peers least recently seen first (expiring them costs only what expired) and in a
list it samples from (:class:`_PeerClass`), and each address's peers of the torrent in their
own order, so the ``peers_per_ip`` limit evicts without a scan. The limits (see
:mod:`kraken.tracker.peerstore`) are counted with :class:`_Recent` sets, oldest first, so
expiring them costs only what expired.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from kraken.core.digest import Digest
from kraken.tasks import TaskOwner
from kraken.tracker.config import LimitsConfig
from kraken.tracker.peerstore import AnnounceRefused, Peer, PeerAddr, PeerStore, Swarm

MAX_SWEEP_INTERVAL = 60.0


@dataclass
class _Mapping:
    digest: Digest
    expires: float


class _Recent:
    """Keys by the time they were last touched, least recent first."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def touch(self, key: bytes, now: float) -> None:
        self._seen[key] = now
        self._seen.move_to_end(key)

    def expire(self, cutoff: float) -> None:
        while self._seen and next(iter(self._seen.values())) < cutoff:
            self._seen.popitem(last=False)


class _PeerClass:
    """The seeders or the leechers of one torrent: by last announce, oldest first, and in a
    list of peers (with each address's index) that a sample draws from in O(sample) and a
    removal keeps dense by moving the last peer into the hole."""

    def __init__(self) -> None:
        self.seen: OrderedDict[PeerAddr, float] = OrderedDict()
        self._peers: list[Peer] = []
        self._index: dict[PeerAddr, int] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def put(self, peer: Peer, now: float) -> None:
        addr = peer.addr
        index = self._index.get(addr)
        if index is None:
            self._index[addr] = len(self._peers)
            self._peers.append(peer)
        else:
            self._peers[index] = peer
            self.seen.move_to_end(addr)
        self.seen[addr] = now

    def remove(self, addr: PeerAddr) -> bool:
        index = self._index.pop(addr, None)
        if index is None:
            return False
        del self.seen[addr]
        last = self._peers.pop()
        if last.addr != addr:
            self._peers[index] = last
            self._index[last.addr] = index
        return True

    def expired(self, cutoff: float) -> list[PeerAddr]:
        """Remove the peers last seen before ``cutoff`` and return their addresses."""
        gone = []
        while self.seen:
            addr, seen = next(iter(self.seen.items()))
            if seen >= cutoff:
                break
            self.remove(addr)
            gone.append(addr)
        return gone

    def sample(self, k: int) -> list[Peer]:
        return random.sample(self._peers, min(k, len(self._peers)))


@dataclass
class _Torrent:
    seeders: _PeerClass = field(default_factory=_PeerClass)
    leechers: _PeerClass = field(default_factory=_PeerClass)
    #: Each address's peers, least recently seen first (for ``peers_per_ip``).
    by_ip: dict[str, OrderedDict[PeerAddr, None]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.seeders) or bool(self.leechers)

    def put(self, peer: Peer, now: float) -> None:
        addr = peer.addr
        mine, other = (self.seeders, self.leechers) if peer.complete else (self.leechers, self.seeders)
        other.remove(addr)
        mine.put(peer, now)
        here = self.by_ip.setdefault(addr.ip, OrderedDict())
        here[addr] = None
        here.move_to_end(addr)

    def remove(self, addr: PeerAddr) -> None:
        if self.seeders.remove(addr) or self.leechers.remove(addr):
            self._unlist(addr)

    def cap(self, ip: str, limit: int) -> None:
        """Evict the least recently seen peers at ``ip`` beyond ``limit``."""
        here = self.by_ip.get(ip)
        while here is not None and len(here) > limit:
            self.remove(next(iter(here)))

    def expire(self, cutoff: float) -> None:
        for addr in self.seeders.expired(cutoff) + self.leechers.expired(cutoff):
            self._unlist(addr)

    def _unlist(self, addr: PeerAddr) -> None:
        here = self.by_ip[addr.ip]
        del here[addr]
        if not here:
            del self.by_ip[addr.ip]


class MemoryPeerStore(PeerStore):
    def __init__(self, ttl: float, limits: LimitsConfig | None = None) -> None:
        self._ttl = ttl
        self._limits = limits or LimitsConfig()
        self._torrents: dict[bytes, _Torrent] = {}
        self._digests: dict[bytes, _Mapping] = {}
        self._recent = _Recent()
        self._recent_by_ip: dict[str, _Recent] = {}
        self._owner = TaskOwner("tracker-memstore")

    async def start(self) -> None:
        self._owner.spawn(self._sweep_forever(), "sweep")

    async def close(self) -> None:
        await self._owner.close()

    async def announce(self, info_hash: bytes, peer: Peer, sample: int, *, exempt: bool = False) -> Swarm:
        now = time.monotonic()
        self._admit(info_hash, peer.addr.ip, now, exempt)
        torrent = self._torrents.get(info_hash)
        if torrent is None:
            torrent = self._torrents[info_hash] = _Torrent()
        torrent.put(peer, now)
        if not exempt:
            torrent.cap(peer.addr.ip, self._limits.peers_per_ip)
        mapping = self._digests.get(info_hash)
        if mapping is not None and mapping.expires > now:
            mapping.expires = now + self._ttl
        return self._swarm(info_hash, now, sample)

    async def leave(self, info_hash: bytes, addr: PeerAddr) -> Swarm:
        torrent = self._torrents.get(info_hash)
        if torrent is not None:
            torrent.remove(addr)
        swarm = self._swarm(info_hash, time.monotonic(), 0)
        return Swarm(num_seeders=swarm.num_seeders, num_leechers=swarm.num_leechers)

    async def set_digest(self, info_hash: bytes, digest: Digest) -> None:
        self._digests[info_hash] = _Mapping(digest, time.monotonic() + self._ttl)

    async def ping(self) -> None:
        """Memory is always there."""

    def _admit(self, info_hash: bytes, ip: str, now: float, exempt: bool) -> None:
        """Count the torrent for the address and in the total, or raise AnnounceRefused."""
        cutoff = now - self._ttl
        self._recent.expire(cutoff)
        mine = self._recent_by_ip.setdefault(ip, _Recent())
        mine.expire(cutoff)
        if not exempt and info_hash not in mine and len(mine) >= self._limits.torrents_per_ip:
            raise AnnounceRefused("ip", self._limits.torrents_per_ip)
        if info_hash not in self._recent and len(self._recent) >= self._limits.torrents:
            raise AnnounceRefused("total", self._limits.torrents)
        self._recent.touch(info_hash, now)
        mine.touch(info_hash, now)

    def _swarm(self, info_hash: bytes, now: float, sample: int) -> Swarm:
        mapping = self._digests.get(info_hash)
        torrent = self._torrents.get(info_hash)
        if torrent is None:
            return Swarm(digest=mapping.digest if mapping is not None and mapping.expires > now else None)
        torrent.expire(now - self._ttl)
        return Swarm(
            seeders=torrent.seeders.sample(sample),
            leechers=torrent.leechers.sample(sample),
            num_seeders=len(torrent.seeders),
            num_leechers=len(torrent.leechers),
            digest=mapping.digest if mapping is not None and mapping.expires > now else None,
        )

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self._ttl, MAX_SWEEP_INTERVAL))
            self._sweep()

    def _sweep(self) -> None:
        """Drop expired peers, empty torrents, expired digest mappings and limit counts."""
        now = time.monotonic()
        cutoff = now - self._ttl
        for info_hash in list(self._torrents):
            torrent = self._torrents[info_hash]
            torrent.expire(cutoff)
            if not torrent:
                del self._torrents[info_hash]
        for info_hash in [h for h, m in self._digests.items() if m.expires <= now]:
            del self._digests[info_hash]
        self._recent.expire(cutoff)
        for ip in list(self._recent_by_ip):
            self._recent_by_ip[ip].expire(cutoff)
            if not self._recent_by_ip[ip]:
                del self._recent_by_ip[ip]
