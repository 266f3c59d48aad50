"""A cold blob streamed by a real agent process while it downloads (kraken.agent.streaming).

The agent asks an in-process tracker for metainfo and peers; an in-process P2P session seeds
the blob with its upload capped, so the download takes seconds and a client can be seen
reading the blob's first bytes while the agent has not finished it (the cache is empty and
the agent counts no completed download yet). A seed of other bytes under the digest's name
passes every piece check: only the whole-blob sha256 catches it, and the client's transfer
is then cut short before its last piece while nothing enters the cache. Waits poll with
deadlines; nothing sleeps to synchronise.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from kraken.config import ListenConfig
from kraken.core.digest import Digest
from kraken.core.metainfo import generate_metainfo
from kraken.devcluster import CONFIG_ROOT, Process, Supervisor, free_port, write_overlay
from kraken.metrics import Metrics
from kraken.p2p import P2PConfig, P2PSession
from tests.support.metrics import metric
from tests.support.p2p import AnnounceTrackerForTests
from tests.support.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")

MiB = 1 << 20
DEADLINE = 30.0
PIECE = 1 << 20
#: The seeder's upload cap: a 12 MiB blob takes ~3 s, its first piece ~0.25 s.
RATE = 4 * MiB
REPO = "test/streaming"


@dataclass
class Rig:
    """A fake tracker (metainfo and announces), a capped seeder and one agent process."""

    tmp: Path
    seeder: P2PSession
    tracker: AnnounceTrackerForTests
    supervisor: Supervisor
    http: aiohttp.ClientSession
    metainfo: dict[str, bytes] = field(default_factory=dict)  # digest hex -> metainfo
    agent: Process | None = None
    server_port: int = 0
    store: Path = Path()

    async def add_blob(self, digest: Digest, data: bytes) -> None:
        """Seed ``data`` as the blob ``digest`` (other bytes make a corrupt seed)."""
        path = self.tmp / "seeded" / digest.hex
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        metainfo = await asyncio.to_thread(generate_metainfo, path, digest.hex, PIECE)
        self.metainfo[digest.hex] = metainfo
        await self.seeder.seed(metainfo, path, self.tracker.url)

    def cached(self, digest: Digest) -> Path:
        h = digest.hex
        return self.store / "cache" / "sha256" / h[0:2] / h[2:4] / h

    def blob_urls(self, digest: Digest) -> tuple[str, str]:
        """The blob on the agent's registry and on its agent server."""
        assert self.agent is not None
        return (f"{self.agent.url}/v2/{REPO}/blobs/{digest}",
                f"http://127.0.0.1:{self.server_port}/namespace/{quote(REPO, safe='')}/blobs/{digest}")

    async def fetches(self, result: str) -> float:
        async with self.http.get(f"http://127.0.0.1:{self.server_port}/metrics") as r:
            return metric(await r.text(), "kraken_agent_blob_fetches_total", 0.0, result=result)

    def log(self) -> str:
        assert self.agent is not None
        return self.agent.log_path.read_text(errors="replace")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("streaming")
    seeder = await P2PSession.start(
        P2PConfig(listen=ListenConfig(host="127.0.0.1", port=0), stats_interval=0.1, min_announce_interval=1,
                  seed_idle_time=0, upload_rate_limit=RATE),
        Metrics("test-streaming-seeder"), role="origin",
    )
    tracker = AnnounceTrackerForTests()
    metainfo: dict[str, bytes] = {}

    async def serve_metainfo(request: web.Request) -> web.Response:
        data = metainfo.get(Digest.parse(request.match_info["digest"]).hex)
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/x-bittorrent")

    app = web.Application()
    app.router.add_get("/announce", tracker.announce)
    app.router.add_get("/namespace/{ns:.+}/blobs/{digest}/metainfo", serve_metainfo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    addr = f"127.0.0.1:{runner.addresses[0][1]}"
    tracker.url = f"http://{addr}/announce"
    sup = Supervisor(tmp / "procs")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            rig = Rig(tmp, seeder, tracker, sup, http, metainfo)
            rig.store = tmp / "agent"
            config = write_overlay(
                tmp / "agent.yaml", CONFIG_ROOT / "agent" / "development.yaml",
                {
                    "store": {"root": str(rig.store)},
                    "tracker": {"addr": addr},
                    "build_index": {"addr": f"127.0.0.1:{free_port()}"},  # never asked here
                    "origins": {"hosts": []},
                    "p2p": {"stats_interval": "100ms", "min_announce_interval": "1s"},
                },
            )
            rig.server_port = free_port()
            rig.agent = Process("agent-stream", "agent", free_port(), config, tmp / "agent.log",
                                ["--server-port", str(rig.server_port), "--peer-port", str(free_port()),
                                 "--peer-ip", "127.0.0.1"])
            await asyncio.to_thread(sup.start, rig.agent)
            yield rig
    finally:
        await asyncio.to_thread(sup.stop_all)
        await seeder.close()
        await runner.cleanup()


async def test_a_cold_blob_streams_while_it_downloads(rig: Rig) -> None:
    data = os.urandom(12 * MiB + 4321)
    digest = Digest.of_bytes(data)
    await rig.add_blob(digest, data)
    registry_url, server_url = rig.blob_urls(digest)
    assert await rig.fetches("downloaded") == 0

    async with rig.http.get(registry_url) as first:
        assert first.status == 200 and first.content_length == len(data)
        head = await first.content.readany()
        # The first bytes are here, the download is not over: nothing cached, nothing counted.
        assert head and not rig.cached(digest).exists()
        assert await rig.fetches("downloaded") == 0
        # Others join the same download: one goes away after its first bytes, one reads it all.
        async with rig.http.get(server_url) as leaver:
            assert leaver.status == 200 and await leaver.content.readany()
        async with rig.http.get(server_url) as second:
            assert second.status == 200 and second.content_length == len(data)
            assert await second.read() == data
        assert head + await first.read() == data
    await until(lambda: rig.cached(digest).exists(), timeout=DEADLINE, what="the blob in the cache")
    assert rig.cached(digest).read_bytes() == data
    assert await rig.fetches("downloaded") == 1, "one download for all three clients"
    assert rig.log().count("Added new torrent") == 1
    # Warm now: the cached file, ranges included.
    async with rig.http.get(server_url, headers={"Range": "bytes=5-9"}) as r:
        assert r.status == 206 and await r.read() == data[5:10]
    assert await rig.fetches("cache") >= 1


async def test_a_cold_range_and_head_wait_for_the_verified_file(rig: Rig) -> None:
    data = os.urandom(3 * MiB + 5)
    digest = Digest.of_bytes(data)
    await rig.add_blob(digest, data)
    registry_url, _ = rig.blob_urls(digest)
    async with rig.http.head(registry_url) as r:
        assert r.status == 200 and r.content_length == len(data)
    assert not rig.cached(digest).exists(), "a HEAD downloads nothing"
    async with rig.http.get(registry_url, headers={"Range": f"bytes={MiB}-{MiB + 99}"}) as r:
        assert r.status == 206 and await r.read() == data[MiB:MiB + 100]
    assert rig.cached(digest).read_bytes() == data


@pytest.mark.parametrize("route", [0, 1], ids=["registry", "agent-server"])
async def test_a_corrupt_seed_cuts_the_stream_and_caches_nothing(rig: Rig, route: int) -> None:
    """Every piece matches the metainfo (made from the wrong bytes): the client streams them
    and is cut short before the last piece, when the whole blob's sha256 fails."""
    wanted = Digest.of_bytes(f"the real blob {route}".encode() * 1000)
    size = 3 * MiB + 77
    await rig.add_blob(wanted, os.urandom(size))
    corrupt_before = await rig.fetches("corrupt")
    received = 0
    async with rig.http.get(rig.blob_urls(wanted)[route]) as r:
        assert r.status == 200 and r.content_length == size
        with pytest.raises(aiohttp.ClientPayloadError):
            while chunk := await r.content.readany():
                received += len(chunk)
    assert 0 < received <= size - (size % PIECE), "bytes before the last piece only"
    assert not rig.cached(wanted).exists()
    assert list((rig.store / "download").iterdir()) == []
    assert "does not match its digest" in rig.log()
    assert await rig.fetches("corrupt") == corrupt_before + 1
