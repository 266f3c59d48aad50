"""The in-memory peer store: for a single tracker (the default; development and tests).

Reads ignore entries older than the TTL, so expiry is exact; a periodic sweep frees the
memory of peers and torrents that stopped announcing.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from kraken.core.digest import Digest
from kraken.tasks import TaskOwner
from kraken.tracker.peerstore import Peer, PeerAddr, PeerStore, Swarm

MAX_SWEEP_INTERVAL = 60.0


@dataclass
class _Entry:
    peer: Peer
    seen: float


@dataclass
class _Mapping:
    digest: Digest
    expires: float


class MemoryPeerStore(PeerStore):
    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._torrents: dict[bytes, dict[PeerAddr, _Entry]] = {}
        self._digests: dict[bytes, _Mapping] = {}
        self._owner = TaskOwner("tracker-memstore")

    async def start(self) -> None:
        self._owner.spawn(self._sweep_forever(), "sweep")

    async def close(self) -> None:
        await self._owner.close()

    async def announce(self, info_hash: bytes, peer: Peer, sample: int) -> Swarm:
        now = time.monotonic()
        self._torrents.setdefault(info_hash, {})[peer.addr] = _Entry(peer, now)
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
        """Drop expired peers, empty torrents and expired digest mappings."""
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
