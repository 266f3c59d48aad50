"""Two trackers on one Redis peer store, and a tracker killed mid-download (real processes).

The herd (redis-server, testfs, origin, two trackers, build-index, proxy) and two agents run
as real processes; the origin and both agents list both trackers (``tracker.addrs``). Every
process on this host prefers the same tracker (:func:`kraken.http.hostlist.host_offset`), the
one this module kills with SIGKILL while an agent downloads a blob the origin uploads slowly
(``p2p.upload_rate_limit``). The agents' HTTP fallback is off (``download.fallback_after:
0``): every byte an agent returns came over P2P, so a swarm that lost its tracker shows up as
a pull that fails or does not finish.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import libtorrent as lt
import pytest
from yarl import URL

from kraken.core.digest import Digest
from kraken.core.metainfo import info_hash
from kraken.devcluster import AgentPorts, HerdPorts, Process, Supervisor, agent_processes, free_port, herd_processes
from kraken.devcluster.plan import REDIS_DIR
from kraken.http.hostlist import host_offset
from tests.support.cluster import Herd
from tests.support.metrics import metric
from tests.support.proxy import Proxy
from tests.support.swarm import REPO, counters, pull
from tests.support.tracker import Answer, announce_query
from tests.support.waiting import until

BLOB_SIZE = 12 << 20
ORIGIN_RATE = 2 << 20  # bytes/s: the download takes about 6 s, the kill lands in the middle
#: "A new pull after the kill works within seconds".
NEW_PULL_DEADLINE = 10.0


class TwoTrackers:
    """The herd, its second tracker, and which of the two every process here prefers."""

    def __init__(self, herd: Herd, second: Process) -> None:
        self.herd = herd
        self.trackers = [herd.tracker, second]
        self.preferred = self.trackers[host_offset(2, socket.gethostname())]
        self.other = next(t for t in self.trackers if t is not self.preferred)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoTrackers]:
    workdir = Path(tmp_path_factory.mktemp("tracker-failover"))
    ports = HerdPorts.free()
    second_port = free_port()
    addrs = [f"127.0.0.1:{ports.tracker}", f"127.0.0.1:{second_port}"]
    overrides = {
        "origin": {"tracker": {"addrs": addrs}, "p2p": {"upload_rate_limit": ORIGIN_RATE, "stats_interval": "200ms"}},
        "tracker": {"announce_interval": "1s"},
    }
    agent_overrides = {"tracker": {"addrs": addrs}, "download": {"fallback_after": 0},
                       "p2p": {"stats_interval": "200ms", "min_announce_interval": "1s"}}
    sup = Supervisor(workdir)
    (workdir / REDIS_DIR).mkdir()
    try:
        procs = herd_processes(workdir, ports, overrides=overrides, redis=True)
        tracker = next(p for p in procs if p.name == "tracker")
        second = Process("tracker-2", "tracker", second_port, tracker.config, workdir / "logs" / "tracker-2.log")
        agents = {f"agent-{i}": AgentPorts.free() for i in (1, 2)}
        for proc in [*procs, second, *agent_processes(workdir, ports, agents, overrides=agent_overrides)]:
            sup.start(proc)
        yield TwoTrackers(Herd(sup, workdir, ports), second)
    finally:
        sup.stop_all()


async def announce_to(tracker: Process, ih: bytes, source_ip: str) -> Answer:
    """A leecher's announce to ``tracker`` from ``source_ip`` (a 127.0.0.x address)."""
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
        query = announce_query(ih, 6881, left=1, event="started")
        async with http.get(URL(f"{tracker.url}/announce?{query}", encoded=True)) as resp:
            return Answer(resp.status, lt.bdecode(await resp.read()))


async def blob_info_hash(http: aiohttp.ClientSession, tracker: Process, digest: Digest) -> bytes:
    async with http.get(f"{tracker.url}/namespace/{quote(REPO, safe='')}/blobs/{digest}/metainfo") as r:
        assert r.status == 200, await r.text()
        return bytes.fromhex(info_hash(await r.read()))


async def failovers(http: aiohttp.ClientSession, proc: Process, component: str) -> float:
    port = proc.health_port or proc.port
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return metric(text, f"kraken_{component}_tracker_failovers_total", 0.0)


def logged(proc: Process, line: str) -> bool:
    return line in proc.log_path.read_text(errors="replace")[proc.log_offset:]


async def test_a_tracker_killed_mid_download_neither_stops_it_nor_new_pulls(
    cluster: TwoTrackers, http: aiohttp.ClientSession,
) -> None:
    herd = cluster.herd
    agent, other_agent = herd.agents
    data = os.urandom(BLOB_SIZE)
    digest = await Proxy(herd, http).push_monolithic(REPO, data)
    download = asyncio.create_task(pull(http, agent, digest))
    try:
        await until(lambda: _downloading(http, agent), 30, "the download to start", alive=_running(download))
        # The peer store is shared: the tracker this agent does not announce to hands it out.
        ih = await blob_info_hash(http, cluster.other, digest)
        answer = await announce_to(cluster.other, ih, "127.0.0.9")
        assert answer.status == 200 and any(p.port == agent.other_ports[0] for p in answer.peers), answer.peers
        assert not download.done()
        herd.supervisor.kill(cluster.preferred.name)
        assert await asyncio.wait_for(download, 60) == (digest, BLOB_SIZE)
    finally:
        download.cancel()

    small = os.urandom(300_000)
    fresh = await Proxy(herd, http).push_monolithic(REPO, small)
    started = time.monotonic()
    assert await asyncio.wait_for(pull(http, other_agent, fresh), NEW_PULL_DEADLINE) == (fresh, len(small))
    print(f"new pull {time.monotonic() - started:.2f}s after the kill")

    # Both agents (metainfo, announces) and the origin (announces) say they failed over.
    await until(lambda: all(logged(p, "tracker failover") for p in (agent, other_agent, herd.origin)), 20,
                "agents' and origin's logs to say they failed over")
    for proc, component in ((agent, "agent"), (other_agent, "agent"), (herd.origin, "origin")):
        assert await failovers(http, proc, component) >= 1, proc.name
        assert f"tracker={cluster.preferred.addr}" in proc.log_path.read_text(errors="replace")


async def _downloading(http: aiohttp.ClientSession, agent: Process) -> bool:
    return (await counters(http, agent)).from_origin > 0


def _running(task: asyncio.Task) -> Callable[[], str | None]:
    def check() -> str | None:
        if task.done():
            return f"the pull ended before the kill: {task.exception() or task.result()}"
        return None
    return check
