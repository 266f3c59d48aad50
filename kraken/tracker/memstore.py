"""The in-memory peer store: for a single tracker (the default; development and tests).

Reads ignore entries older than the TTL, so expiry is exact; a periodic sweep frees the
memory of peers and torrents that stopped announcing. The limits (see
:mod:`kraken.tracker.peerstore`) are counted with :class:`_Recent` sets, oldest first, so
expiring them costs only what expired.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from dataclasses import dataclass

from kraken.core.digest import Digest
from kraken.tasks import TaskOwner
from kraken.tracker.config import LimitsConfig
from kraken.tracker.peerstore import AnnounceRefused, Peer, PeerAddr, PeerStore, Swarm

MAX_SWEEP_INTERVAL = 60.0


@dataclass
class _Entry:
    peer: Peer
    seen: float


@dataclass
class _Mapping:
    digest: Digest
    expires: float


class _Recent:
    """Info-hashes by the time they were last announced, least recent first."""

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


class MemoryPeerStore(PeerStore):
    def __init__(self, ttl: float, limits: LimitsConfig | None = None) -> None:
        self._ttl = ttl
        self._limits = limits or LimitsConfig()
        self._torrents: dict[bytes, dict[PeerAddr, _Entry]] = {}
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
        peers = self._torrents.setdefault(info_hash, {})
        peers[peer.addr] = _Entry(peer, now)
        if not exempt:
            self._cap_address(peers, peer.addr.ip)
        mapping = self._digests.get(info_hash)
        if mapping is not None and mapping.expires > now:
            mapping.expires = now + self._ttl
        return self._swarm(info_hash, now, sample)

    async def leave(self, info_hash: bytes, addr: PeerAddr) -> Swarm:
        peers = self._torrents.get(info_hash)
        if peers is not None:
            peers.pop(addr, None)
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

    def _cap_address(self, peers: dict[PeerAddr, _Entry], ip: str) -> None:
        """Evict the least recently seen peers at ``ip`` beyond ``peers_per_ip``."""
        same = [(e.seen, addr) for addr, e in peers.items() if addr.ip == ip]
        for _, addr in sorted(same, key=lambda x: x[0])[:max(0, len(same) - self._limits.peers_per_ip)]:
            del peers[addr]

    def _swarm(self, info_hash: bytes, now: float, sample: int) -> Swarm:
        cutoff = now - self._ttl
        live = [e.peer for e in self._torrents.get(info_hash, {}).values() if e.seen >= cutoff]
        seeders = [p for p in live if p.complete]
        leechers = [p for p in live if not p.complete]
        mapping = self._digests.get(info_hash)
        return Swarm(
            seeders=random.sample(seeders, min(sample, len(seeders))),
            leechers=random.sample(leechers, min(sample, len(leechers))),
            num_seeders=len(seeders),
            num_leechers=len(leechers),
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
            peers = self._torrents[info_hash]
            for addr in [a for a, e in peers.items() if e.seen < cutoff]:
                del peers[addr]
            if not peers:
                del self._torrents[info_hash]
        for info_hash in [h for h, m in self._digests.items() if m.expires <= now]:
            del self._digests[info_hash]
        self._recent.expire(cutoff)
        for ip in list(self._recent_by_ip):
            self._recent_by_ip[ip].expire(cutoff)
            if not self._recent_by_ip[ip]:
                del self._recent_by_ip[ip]
