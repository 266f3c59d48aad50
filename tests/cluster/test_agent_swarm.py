"""Three agents as a swarm: bytes really move between agents, and a dead peer does not stall it.

A herd (testfs, origin, tracker, build-index, proxy) and three agents run as real processes.
The origin's P2P upload is capped at 8 MiB/s, so alone it needs 8 s per copy of a 64 MiB blob
(24 s for three agents); the agents' own uploads are not capped. Pieces are 1 MiB, so the
blob is 64 pieces the agents can trade.

- Three agents pull one blob at once: each returns the exact bytes (sha256), the agents'
  counters show a good part of a copy of the blob moving between them (more than a copy in
  every run measured), and the origin's own upload counter shows it sent well under the
  three copies it would have without P2P.
- One agent is SIGKILLed mid-download (it has bytes and is uploading to the others): the
  other two still finish with the exact bytes, within a deadline well below libtorrent's
  request and peer timeouts (so nobody waits on the dead peer), the tracker still answers,
  and the killed agent's cache holds nothing of the blob. Restarted, it empties its staging
  dir and pulls the blob whole.

Counters are read from ``/metrics`` (refreshed every ``p2p.stats_interval``, 200 ms here), as
differences across each test, since the herd is shared by the module. No sleeps: every wait
polls against a deadline.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from kraken.core.digest import Digest
from kraken.devcluster import Process
from tests.support.cluster import Herd, start_herd
from tests.support.proxy import Proxy
from tests.support.swarm import REPO, Counters, counters, pull, settled
from tests.support.waiting import until

MB = 1 << 20
BLOB_SIZE = 64 * MB
ORIGIN_UPLOAD_CAP = 8 * MB  # bytes/s: 8 s per copy of the blob

OVERRIDES = {
    "origin": {
        "metainfo": {"piece_lengths": {0: "1MB"}},
        "p2p": {"upload_rate_limit": ORIGIN_UPLOAD_CAP, "stats_interval": "200ms"},
    },
    "agent": {"p2p": {"stats_interval": "200ms"}},
}


@pytest.fixture(scope="module")
def swarm_herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    h = start_herd(Path(tmp_path_factory.mktemp("swarm")), agents=3, overrides=OVERRIDES)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def herd(swarm_herd: Herd) -> Herd:
    """The module's herd with every agent running (a test that failed midway may have left its
    victim dead)."""
    for agent in swarm_herd.agents:
        if not agent.alive():
            swarm_herd.supervisor.restart(agent.name)
    return swarm_herd



# ---- helpers -------------------------------------------------------------------------------


async def push_blob(http: aiohttp.ClientSession, herd: Herd) -> Digest:
    """A random blob pushed through the proxy, as docker would push a layer."""
    return await Proxy(herd, http).push_streamed(REPO, os.urandom(BLOB_SIZE))


def store_root(herd: Herd, agent: Process) -> Path:
    """``store.root`` of an agent (kraken.devcluster.agent_processes): cache/ and download/."""
    return herd.workdir / agent.name


def cached_files(herd: Herd, agent: Process, digest: Digest) -> list[Path]:
    return [p for p in (store_root(herd, agent) / "cache").rglob(f"{digest.hex}*")]


def copies(n: float) -> str:
    return f"{n / BLOB_SIZE:.2f} copies"


# ---- tests ---------------------------------------------------------------------------------


async def test_three_agents_pulling_at_once_trade_pieces_and_spare_the_origin(
    herd: Herd, http: aiohttp.ClientSession,
) -> None:
    digest = await push_blob(http, herd)
    agents = herd.agents
    assert len(agents) == 3
    before = {a.name: await counters(http, a) for a in [herd.origin, *agents]}

    start = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*(pull(http, a, digest) for a in agents)), timeout=60)
    elapsed = time.monotonic() - start
    for agent, (got, size) in zip(agents, results, strict=True):
        assert (got, size) == (digest, BLOB_SIZE), agent.name

    async def deltas() -> dict[str, Counters]:
        return {p.name: await counters(http, p) - before[p.name] for p in [herd.origin, *agents]}

    delta = await settled(deltas)
    from_peers = sum(delta[a.name].from_peers for a in agents)
    from_origin = sum(delta[a.name].from_origin for a in agents)
    agents_uploaded = sum(delta[a.name].uploaded for a in agents)
    origin_uploaded = delta[herd.origin.name].uploaded
    report = (f"{elapsed:.1f}s; agents got {copies(from_peers)} from peers and {copies(from_origin)} "
              f"from the origin, uploaded {copies(agents_uploaded)}; the origin uploaded "
              f"{copies(origin_uploaded)}; per agent {delta}")
    print(report)

    # Every agent downloaded the blob (sources are estimated per connection, the total is exact).
    for agent in agents:
        assert delta[agent.name].downloaded >= BLOB_SIZE, report
    # Without P2P between agents, the origin would send 3 copies and the agents none. Measured
    # on a busy 2-core host (1 MiB pieces): agents got 1.14-1.59 copies from each other and the
    # origin sent 1.45-1.95 (it sends some pieces to several agents before any of them has one
    # to share), in 12.5-17 s.
    # Agents served each other a good part of a copy: by what they received from peers
    # (estimated per connection) and by what they sent (libtorrent's exact counter).
    assert from_peers > 0.6 * BLOB_SIZE, report
    assert agents_uploaded > 0.6 * BLOB_SIZE, report
    # The origin sent at least one copy (no agent had the blob) and at most 80% of the three
    # it would have sent alone.
    assert BLOB_SIZE <= origin_uploaded < 2.4 * BLOB_SIZE, report


async def test_an_agent_killed_mid_download_does_not_stall_the_others(
    herd: Herd, http: aiohttp.ClientSession,
) -> None:
    digest = await push_blob(http, herd)
    *survivors, victim = herd.agents
    before = await counters(http, victim)

    pulls = {a.name: asyncio.create_task(pull(http, a, digest)) for a in herd.agents}
    try:
        # The victim is mid-download and is a peer the others use: it has received some of the
        # blob and sent some of it on.
        async def victim_busy() -> Counters | None:
            assert not pulls[victim.name].done(), "the victim finished before it could be killed"
            now = await counters(http, victim) - before
            return now if now.downloaded >= 8 * MB and now.uploaded >= 1 * MB else None

        at_kill: Counters = await until(victim_busy, timeout=30, what="the victim to download and upload some")
        herd.supervisor.kill(victim.name)
        killed = time.monotonic()
        at_kill_survivors = [await counters(http, a) for a in survivors]
        with pytest.raises(aiohttp.ClientError):
            await pulls.pop(victim.name)

        # The others finish with the exact bytes. From the kill, the origin alone would need at
        # most 16 s for the two copies; libtorrent's request and peer timeouts (60 s, 120 s)
        # are what waiting on the dead peer would cost.
        done = await asyncio.wait_for(asyncio.gather(*pulls.values()), timeout=30)
        finished = time.monotonic() - killed
        for agent, (got, size) in zip(survivors, done, strict=True):
            assert (got, size) == (digest, BLOB_SIZE), agent.name
    finally:
        for task in pulls.values():
            task.cancel()
        await asyncio.gather(*pulls.values(), return_exceptions=True)

    # After the kill the two survivors still traded with each other, not only with the origin.
    async def since_kill() -> list[Counters]:
        return [await counters(http, a) - c for a, c in zip(survivors, at_kill_survivors, strict=True)]

    after_kill = await settled(since_kill)
    report = (f"killed {victim.name} having downloaded {at_kill.downloaded / MB:.1f} MiB and uploaded "
              f"{at_kill.uploaded / MB:.1f} MiB; the survivors finished {finished:.1f}s later, having "
              f"since then got {sum(c.from_peers for c in after_kill) / MB:.1f} MiB from each other "
              f"and {sum(c.from_origin for c in after_kill) / MB:.1f} MiB from the origin")
    print(report)
    assert sum(c.from_peers for c in after_kill) >= 2 * MB, report

    async with http.get(herd.tracker.health_url) as r:
        assert r.status == 200
    # A partial download lives in <root>/download only: nothing of it reached the cache.
    assert cached_files(herd, victim, digest) == []

    # Restarted, the victim drops its partial download (staging is emptied at start) and pulls
    # the blob whole, now from the two complete agents as well.
    await asyncio.to_thread(herd.supervisor.restart, victim.name)
    assert list((store_root(herd, victim) / "download").iterdir()) == []
    assert await asyncio.wait_for(pull(http, victim, digest), timeout=30) == (digest, BLOB_SIZE)
    assert cached_files(herd, victim, digest) != []
    after = await counters(http, victim)
    report = (f"restarted {victim.name} got {after.from_peers / MB:.1f} MiB from peers, "
              f"{after.from_origin / MB:.1f} MiB from the origin")
    print(report)
    # The tracker hands out complete agents first, and they are not rate-limited.
    assert after.downloaded >= BLOB_SIZE, report
    assert after.from_peers >= BLOB_SIZE / 2, report
