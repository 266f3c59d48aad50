"""The tracker's logic, under its HTTP routes: announces and metainfo.

An announce records the peer in the peer store (within its limits: origins, known by their
``origin_p2p`` address, are exempt from the per-address ones) and answers with the handout:
confirmed seeders, the blob's owning origins, leechers, seeders not confirmed by a probe (see
:mod:`kraken.tracker.handout`). A seeder's announce starts a probe of its address. The
origins are known only once the tracker has served the torrent's metainfo (that is where it
learns info-hash -> digest); agents always fetch it from the tracker before they announce, so
in practice every swarm has its origins.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aiohttp import web

from kraken.core.digest import Digest
from kraken.http.client import HttpClient, create_client
from kraken.http.health import check_any
from kraken.log import get_logger
from kraken.origin.client import OriginCluster
from kraken.tasks import TaskOwner
from kraken.tracker.announce import EVENTS, AnnounceRequest, encode_peers
from kraken.tracker.config import TrackerConfig
from kraken.tracker.handout import handout
from kraken.tracker.memstore import MemoryPeerStore
from kraken.tracker.metainfo import MetainfoAnswer, MetainfoCache, MetainfoProxy
from kraken.tracker.metrics import TrackerMetrics
from kraken.tracker.origins import OriginPeers
from kraken.tracker.peerstore import Peer, PeerAddr, PeerStore
from kraken.tracker.probe import SeederProbe
from kraken.tracker.redisstore import RedisPeerStore
from kraken.tracker.slots import SwarmSlots

log = get_logger("tracker")


def open_store(config: TrackerConfig) -> PeerStore:
    if config.store == "redis":
        return RedisPeerStore(config.redis, config.peer_ttl, config.limits)
    return MemoryPeerStore(config.peer_ttl, config.limits)


@dataclass
class _Running:
    """What exists only while the tracker runs (opened in :meth:`TrackerService.lifecycle`)."""

    store: PeerStore
    http: HttpClient
    origins: OriginCluster
    metainfo: MetainfoProxy
    probe: SeederProbe


class TrackerService:
    """Made from the config when the app is built (no I/O); :meth:`lifecycle`, the app's
    cleanup context, opens the peer store and the clients (they need a running loop) and
    closes them."""

    def __init__(self, config: TrackerConfig, metrics: TrackerMetrics) -> None:
        self.config = config
        self._metrics = metrics
        # Metric children by label, looked up once: labels() costs more than the rest of a count.
        self._announced = {e or "none": metrics.announces.labels(e or "none") for e in EVENTS}
        self._returned = {c: metrics.peers_returned.labels(c) for c in ("seeder", "origin", "leecher", "unconfirmed")}
        self._origin_peers = OriginPeers(config.origin_p2p)
        self._running: _Running | None = None
        self.swarm_slots = SwarmSlots()

    async def lifecycle(self, _: web.Application) -> AsyncIterator[None]:
        """Each close is registered as soon as its resource exists, so a failed start closes
        what already started; closed in reverse order at shutdown."""
        config = self.config
        async with AsyncExitStack() as stack:
            http = create_client(config.http_client, config.tls)
            stack.push_async_callback(http.close)
            store = open_store(config)
            stack.push_async_callback(store.close)
            await store.start()
            owner = TaskOwner("tracker")
            stack.push_async_callback(owner.close)
            origins = OriginCluster(config.origins, http, config.metainfo.poll_timeout, self._metrics.ring)
            origins.start()
            stack.push_async_callback(origins.close)
            cache = MetainfoCache(config.metainfo.cache_size, config.metainfo.cache_ttl)
            self._running = _Running(store, http, origins, MetainfoProxy(origins, cache, self._metrics, owner),
                                     SeederProbe(config.probe, owner))
            stack.callback(setattr, self, "_running", None)
            log.info("tracker configured", store=config.store, origins=",".join(config.origins.hosts),
                     announce_interval=config.announce_interval, peer_ttl=config.peer_ttl)
            yield

    @property
    def running(self) -> _Running:
        if self._running is None:
            raise RuntimeError("tracker not started")
        return self._running

    @property
    def store(self) -> PeerStore:
        return self.running.store

    async def announce(self, request: AnnounceRequest, ip: str) -> bytes:
        """Record the announcer and return the bencoded answer; raises PeerStoreError, or
        AnnounceRefused beyond the store's limits."""
        probe = self.running.probe
        me = Peer(PeerAddr(ip, request.port), request.peer_id, request.complete)
        if request.event == "stopped":
            swarm = await self.store.leave(request.info_hash, me.addr)
            self._announced["stopped"].inc()
            return encode_peers(self.config.announce_interval, swarm.num_seeders, swarm.num_leechers, [])
        wanted = request.numwant if request.numwant is not None else self.config.max_peers_returned
        limit = min(self.config.max_peers_returned, wanted)
        # One extra of each class, in case the sample holds the announcer itself.
        is_origin = me.addr in await self._origin_peers.peers(self.config.origins.hosts)
        swarm = await self.store.announce(request.info_hash, me, limit + 1, exempt=is_origin)
        self._announced[request.event or "none"].inc()
        if me.complete and not is_origin:
            probe.check(me.addr)
        origins = await self._owning_origins(swarm.digest)
        chosen = handout(swarm, origins, me, limit, probe.confirmed)
        for name, peers in (("seeder", chosen.seeders), ("origin", chosen.origins), ("leecher", chosen.leechers),
                            ("unconfirmed", chosen.unconfirmed)):
            if peers:
                self._returned[name].inc(len(peers))
        # Origins are seeders too; one that also announces is counted once (if it was sampled).
        seeders = swarm.num_seeders
        if origins:
            seeders += len(set(origins) - {p.addr for p in swarm.seeders})
        ordered = chosen.ordered()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("announce", info_hash=request.info_hash.hex(), peer=f"{ip}:{request.port}",
                      event=request.event or "none", left=request.left, returned=len(ordered))
        return encode_peers(self.config.announce_interval, seeders, swarm.num_leechers, ordered)

    async def _owning_origins(self, digest: Digest | None) -> list[PeerAddr]:
        if digest is None:
            return []
        return await self._origin_peers.peers(await self.running.origins.locations(digest))

    async def metainfo(self, namespace: str, digest: Digest) -> MetainfoAnswer:
        """The blob's metainfo from the cache or its origin; a success also teaches (or reminds)
        the peer store which digest the torrent is. Raises PeerStoreError."""
        answer = await self.running.metainfo.get(namespace, digest)
        if answer.info_hash is not None:
            await self.store.set_digest(answer.info_hash, digest)
        return answer

    async def readiness(self) -> None:
        """Ready when at least one origin answers /health and the peer store answers."""
        await self.store.ping()
        await check_any(self.running.http, self.config.origins.hosts, "origin")
