"""Whether announced seeders really accept connections (the handout's defence against fake ones).

Anyone can announce ``left=0`` for any torrent from any port; seeders that never answer would
fill the handout and leave agents dialling dead ports. So when a seeder announces, the tracker
opens a TCP connection to its announced address and closes it at once (libtorrent sees a peer
that went away before its handshake). Seeders that accepted are *confirmed*; the rest (refused,
timed out, or not probed yet) come after the origins and leechers in the handout.

Cheap and bounded: at most ``concurrency`` probes in flight and as many more queued (beyond
that an announce is simply not probed, and its seeder stays unconfirmed); each answer is
cached for ``ttl`` (so a seeder is probed about once per ``ttl``, at its next announce), in a
cache of at most :data:`MAX_ENTRIES` addresses, least recently probed out first. The probe
tasks belong to the tracker's TaskOwner, cancelled at shutdown.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from kraken.log import get_logger
from kraken.tasks import TaskOwner
from kraken.tracker.config import ProbeConfig
from kraken.tracker.peerstore import PeerAddr

log = get_logger("tracker")

MAX_ENTRIES = 100_000


class SeederProbe:
    def __init__(self, config: ProbeConfig, owner: TaskOwner) -> None:
        self._config = config
        self._owner = owner
        self._slots = asyncio.Semaphore(config.concurrency)
        self._answers: OrderedDict[PeerAddr, tuple[float, bool]] = OrderedDict()  # addr -> (expires, ok)
        self._pending: set[PeerAddr] = set()

    def confirmed(self, addr: PeerAddr) -> bool:
        """Whether ``addr`` accepted a connection within the last ``ttl``."""
        answer = self._answers.get(addr)
        return answer is not None and answer[1] and answer[0] > time.monotonic()

    def check(self, addr: PeerAddr) -> None:
        """Probe ``addr`` in the background unless it has a fresh answer or is being probed."""
        answer = self._answers.get(addr)
        if (answer is not None and answer[0] > time.monotonic()) or addr in self._pending:
            return
        if len(self._pending) >= 2 * self._config.concurrency:
            return
        self._pending.add(addr)
        self._owner.spawn(self._probe(addr), f"probe:{addr.ip}:{addr.port}")

    async def _probe(self, addr: PeerAddr) -> None:
        try:
            async with self._slots:
                ok = await self._connects(addr)
            self._answers[addr] = (time.monotonic() + self._config.ttl, ok)
            self._answers.move_to_end(addr)
            while len(self._answers) > MAX_ENTRIES:
                self._answers.popitem(last=False)
        finally:
            self._pending.discard(addr)

    async def _connects(self, addr: PeerAddr) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(addr.ip, addr.port), self._config.timeout)
        except (TimeoutError, OSError) as e:
            log.debug("seeder probe failed", peer=f"{addr.ip}:{addr.port}", error=f"{type(e).__name__}: {e}")
            return False
        writer.close()
        return True
