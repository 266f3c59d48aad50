"""Which peers an announcer gets, in which order (Kraken's handout policy).

Seeders (agents with the whole blob) come first: they can serve any piece. The blob's owning
origins come next: they always have the blob, but the point of P2P is to spare them, so
agents are preferred to them. Leechers come last. Order within a class is random, so load
spreads over the class. The announcer itself is never handed out, nor a stale entry of it
under another port (same peer_id), and an origin that also announces appears once, as an
origin.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from kraken.tracker.peerstore import Peer, PeerAddr, Swarm


@dataclass
class Handout:
    seeders: list[PeerAddr] = field(default_factory=list)
    origins: list[PeerAddr] = field(default_factory=list)
    leechers: list[PeerAddr] = field(default_factory=list)

    def ordered(self) -> list[PeerAddr]:
        return self.seeders + self.origins + self.leechers


def handout(swarm: Swarm, origins: list[PeerAddr], requester: Peer, limit: int) -> Handout:
    """At most ``limit`` peers: seeders, then ``origins``, then leechers, each shuffled."""
    origin_set = set(origins)

    def agents(peers: list[Peer]) -> list[PeerAddr]:
        return [
            p.addr for p in peers
            if p.addr != requester.addr and p.peer_id != requester.peer_id and p.addr not in origin_set
        ]

    out = Handout()
    out.seeders = pick(agents(swarm.seeders), limit)
    out.origins = pick([o for o in dict.fromkeys(origins) if o != requester.addr], limit - len(out.seeders))
    out.leechers = pick(agents(swarm.leechers), limit - len(out.seeders) - len(out.origins))
    return out


def pick(candidates: list[PeerAddr], room: int) -> list[PeerAddr]:
    """Up to ``room`` of ``candidates`` in random order."""
    return random.sample(candidates, max(0, min(room, len(candidates))))
