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

from collections.abc import AsyncIterator

from aiohttp import web

from kraken.core.digest import Digest
from kraken.http.client import HttpClient, create_client
from kraken.http.health import check_any
from kraken.log import get_logger
from kraken.origin.client import OriginCluster
from kraken.tasks import TaskOwner
from kraken.tracker.announce import AnnounceRequest, encode_peers
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


class TrackerService:
    """Its clients need a running event loop, so :meth:`lifecycle` (an aiohttp cleanup
    context) creates them at app startup and closes them at shutdown."""

    def __init__(self, config: TrackerConfig, metrics: TrackerMetrics) -> None:
        self.config = config
        self._metrics = metrics
        self._origin_peers = OriginPeers(config.origin_p2p)
        self._store: PeerStore | None = None
        self._http: HttpClient | None = None
        self._origins: OriginCluster | None = None
        self._metainfo: MetainfoProxy | None = None
        self._probe: SeederProbe | None = None
        self.swarm_slots = SwarmSlots()

    async def lifecycle(self, _: web.Application) -> AsyncIterator[None]:
        owner = TaskOwner("tracker")
        http = create_client(self.config.http_client)
        store = open_store(self.config)
        try:
            await store.start()
            origins = OriginCluster(self.config.origins, http, poll_timeout=self.config.metainfo.poll_timeout)
            cache = MetainfoCache(self.config.metainfo.cache_size, self.config.metainfo.cache_ttl)
            self._store, self._http, self._origins = store, http, origins
            self._metainfo = MetainfoProxy(origins, cache, self._metrics, owner)
            self._probe = SeederProbe(self.config.probe, owner)
            log.info("tracker configured", store=self.config.store, origins=",".join(self.config.origins.hosts),
                     announce_interval=self.config.announce_interval, peer_ttl=self.config.peer_ttl)
            yield
        finally:
            await owner.close()
            await store.close()
            await http.close()

    @property
    def store(self) -> PeerStore:
        assert self._store is not None, "tracker app not started"
        return self._store

    async def announce(self, request: AnnounceRequest, ip: str) -> bytes:
        """Record the announcer and return the bencoded answer; raises PeerStoreError, or
        AnnounceRefused beyond the store's limits."""
        assert self._probe is not None, "tracker app not started"
        me = Peer(PeerAddr(ip, request.port), request.peer_id, request.complete)
        if request.event == "stopped":
            swarm = await self.store.leave(request.info_hash, me.addr)
            self._metrics.announces.labels("stopped").inc()
            return encode_peers(self.config.announce_interval, swarm.num_seeders, swarm.num_leechers, [])
        wanted = request.numwant if request.numwant is not None else self.config.max_peers_returned
        limit = min(self.config.max_peers_returned, wanted)
        # One extra of each class, in case the sample holds the announcer itself.
        is_origin = me.addr in await self._origin_peers.peers(self.config.origins.hosts)
        swarm = await self.store.announce(request.info_hash, me, limit + 1, exempt=is_origin)
        self._metrics.announces.labels(request.event or "none").inc()
        if me.complete and not is_origin:
            self._probe.check(me.addr)
        origins = await self._owning_origins(swarm.digest)
        chosen = handout(swarm, origins, me, limit, self._probe.confirmed)
        for name, peers in (("seeder", chosen.seeders), ("origin", chosen.origins), ("leecher", chosen.leechers),
                            ("unconfirmed", chosen.unconfirmed)):
            if peers:
                self._metrics.peers_returned.labels(name).inc(len(peers))
        # Origins are seeders too; one that also announces is counted once (if it was sampled).
        seeders = swarm.num_seeders + len(set(origins) - {p.addr for p in swarm.seeders})
        log.debug("announce", info_hash=request.info_hash.hex(), peer=f"{ip}:{request.port}",
                  event=request.event or "none", left=request.left, returned=len(chosen.ordered()))
        return encode_peers(self.config.announce_interval, seeders, swarm.num_leechers, chosen.ordered())

    async def _owning_origins(self, digest: Digest | None) -> list[PeerAddr]:
        if digest is None:
            return []
        assert self._origins is not None, "tracker app not started"
        return await self._origin_peers.peers(await self._origins.locations(digest))

    async def metainfo(self, namespace: str, digest: Digest) -> MetainfoAnswer:
        """The blob's metainfo from the cache or its origin; a success also teaches (or reminds)
        the peer store which digest the torrent is. Raises PeerStoreError."""
        assert self._metainfo is not None, "tracker app not started"
        answer = await self._metainfo.get(namespace, digest)
        if answer.info_hash is not None:
            await self.store.set_digest(answer.info_hash, digest)
        return answer

    async def readiness(self) -> None:
        """Ready when at least one origin answers /health and the peer store answers."""
        await self.store.ping()
        assert self._http is not None
        await check_any(self._http, self.config.origins.hosts, "origin")
