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
    me, my_id = requester.addr, requester.peer_id
    others = [o for o in dict.fromkeys(origins) if o != me]
    out = Handout()
    if not requester.complete:
        out.origins = pick(others, limit)
    room = limit - len(out.origins)
    unconfirmed: list[PeerAddr] = []
    for p in swarm.seeders:
        if p.addr == me or p.peer_id == my_id or p.addr in origin_set:
            continue
        if confirmed(p.addr):
            if len(out.seeders) < room:
                out.seeders.append(p.addr)
        elif len(unconfirmed) < limit:
            unconfirmed.append(p.addr)
    if requester.complete:
        out.origins = pick(others, limit - len(out.seeders))
    room = limit - len(out.seeders) - len(out.origins)
    for p in swarm.leechers:
        if len(out.leechers) >= room:
            break
        if p.addr != me and p.peer_id != my_id and p.addr not in origin_set:
            out.leechers.append(p.addr)
    out.unconfirmed = unconfirmed[:max(0, room - len(out.leechers))]
    return out


def pick(candidates: list[PeerAddr], room: int) -> list[PeerAddr]:
    """Up to ``room`` of ``candidates`` in random order."""
    return random.sample(candidates, max(0, min(room, len(candidates))))
