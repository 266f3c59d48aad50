"""Which peers an announcer gets, in which order (Kraken's handout policy).

Confirmed seeders (agents with the whole blob that accepted the tracker's probe, see
:mod:`kraken.tracker.probe`) come first: they can serve any piece. The blob's owning origins
come next: they always have the blob, but the point of P2P is to spare them, so agents are
preferred to them. Leechers follow, and seeders not confirmed (yet) come last: anyone can
announce ``left=0`` from a closed port.

While the announcer is incomplete, the origins are always in the answer: their room is
reserved before any agent's, so no number of seeders (fake or real) can push them out of a
``limit``-sized answer. Order within a class is random, so load spreads over the class (the
store's samples come in random order, see :class:`~kraken.tracker.peerstore.Swarm`; only the
origins are shuffled here). The
announcer itself is never handed out, nor a stale entry of it under another port (same
peer_id), and an origin that also announces appears once, as an origin.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kraken.tracker.peerstore import Peer, PeerAddr, Swarm


@dataclass
class Handout:
    seeders: list[PeerAddr] = field(default_factory=list)
    origins: list[PeerAddr] = field(default_factory=list)
    leechers: list[PeerAddr] = field(default_factory=list)
    unconfirmed: list[PeerAddr] = field(default_factory=list)

    def ordered(self) -> list[PeerAddr]:
        return self.seeders + self.origins + self.leechers + self.unconfirmed


def handout(
    swarm: Swarm, origins: list[PeerAddr], requester: Peer, limit: int,
    confirmed: Callable[[PeerAddr], bool] = lambda _: True,
) -> Handout:
    """At most ``limit`` peers: confirmed seeders, ``origins``, leechers, unconfirmed seeders."""
    origin_set = set(origins)

    def agents(peers: list[Peer]) -> list[PeerAddr]:
        return [
            p.addr for p in peers
            if p.addr != requester.addr and p.peer_id != requester.peer_id and p.addr not in origin_set
        ]

    seeders = agents(swarm.seeders)
    others = [o for o in dict.fromkeys(origins) if o != requester.addr]
    out = Handout()
    if not requester.complete:
        out.origins = pick(others, limit)
    out.seeders = [s for s in seeders if confirmed(s)][:max(0, limit - len(out.origins))]
    if requester.complete:
        out.origins = pick(others, limit - len(out.seeders))
    room = max(0, limit - len(out.seeders) - len(out.origins))
    out.leechers = agents(swarm.leechers)[:room]
    if room > len(out.leechers):
        out.unconfirmed = [s for s in seeders if not confirmed(s)][:room - len(out.leechers)]
    return out


def pick(candidates: list[PeerAddr], room: int) -> list[PeerAddr]:
    """Up to ``room`` of ``candidates`` in random order."""
    return random.sample(candidates, max(0, min(room, len(candidates))))
