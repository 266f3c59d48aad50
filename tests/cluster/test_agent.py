"""The agent as a real process: pulls by raw HTTP through its registry and agent server.

The herd (testfs, origin, build-index, proxy) and a tracker run as real processes; images are
pushed through the proxy and pulled through agents. Instead of the origin's own seeding, a
P2P session in this test process seeds the origin's cached files, and the tracker is told
that it is the origin's P2P address (``origin_p2p``): the agents meet it exactly where they
meet a real origin, and a test can stop it seeding to prove bytes came from another agent.
(tests/test_devcluster_p2p.py pulls with the origin seeding itself.) Waits poll with
deadlines; nothing sleeps to synchronise.
"""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from kraken.config import ListenConfig, deep_merge
from kraken.core.digest import Digest
from kraken.core.metainfo import generate_metainfo, info_hash
from kraken.devcluster import CONFIG_ROOT, Process, Supervisor, free_port, write_overlay
from kraken.metrics import Metrics
from kraken.p2p import P2PConfig, P2PSession
from kraken.registry.manifest import OCI_MANIFEST
from tests.support.addresses import non_loopback_address, session_from
from tests.support.cluster import Herd
from tests.support.metrics import metric
from tests.support.p2p import AnnounceTrackerForTests, running_tracker
from tests.support.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEADLINE = 30.0
MiB = 1 << 20


# ---------------------------------------------------------------------------- the cluster


@dataclass
class Agent:
    process: Process
    server_port: int
    store: Path

    @property
    def registry(self) -> str:
        return self.process.url

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def cached(self, digest: Digest) -> Path:
        h = digest.hex
        return self.store / "cache" / "sha256" / h[0:2] / h[2:4] / h

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")


@dataclass
class Cluster:
    herd: Herd
    supervisor: Supervisor
    tracker: Process
    agents: list[Agent]
    seeder: P2PSession
    http: aiohttp.ClientSession

    @property
    def announce_url(self) -> str:
        return f"{self.tracker.url}/announce"

    def start_agent(self, name: str, tracker_addr: str, extra: dict | None = None) -> Agent:
        workdir = self.supervisor.workdir
        store = workdir / name
        config = write_overlay(
            workdir / "config" / f"{name}.yaml",
            CONFIG_ROOT / "agent" / "development.yaml",
            deep_merge(
                {
                    "store": {"root": str(store)},
                    "tracker": {"addr": tracker_addr},
                    "build_index": {"addr": self.herd.build_index.addr},
                    "origins": {"hosts": []},
                    "p2p": {"stats_interval": "100ms", "min_announce_interval": "1s"},
                },
                extra or {},
            ),
        )
        server_port = free_port()
        proc = Process(name, "agent", free_port(), config, workdir / "logs" / f"{name}.log",
                       ["--server-port", str(server_port), "--peer-port", str(free_port()), "--peer-ip", "127.0.0.1"])
        self.supervisor.start(proc)
        return Agent(proc, server_port, store)

    async def push_blob(self, repo: str, data: bytes) -> Digest:
        digest = Digest.of_bytes(data)
        async with self.http.post(f"{self.herd.proxy.url}/v2/{repo}/blobs/uploads/", data=b"") as r:
            assert r.status == 202, await r.text()
            location = r.headers["Location"]
        async with self.http.put(location, params={"digest": str(digest)}, data=data) as r:
            assert r.status == 201, await r.text()
        return digest

    async def push_image(self, repo: str, tag: str, layers: list[bytes]) -> Image:
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        blobs = {await self.push_blob(repo, b): b for b in [config, *layers]}
        config_digest, *layer_digests = blobs
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config_digest),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(d),
                        "size": len(blobs[d])} for d in layer_digests],
        }).encode()
        async with self.http.put(f"{self.herd.proxy.url}/v2/{repo}/manifests/{tag}", data=manifest,
                                 headers={"Content-Type": OCI_MANIFEST}) as r:
            assert r.status == 201, await r.text()
        return Image(repo, tag, Digest.of_bytes(manifest), manifest, blobs)

    async def seed(self, repo: str, digest: Digest) -> str:
        """Seed the origin's cached copy, as the origin will itself; returns the info-hash."""
        url = f"{self.herd.origin.url}/internal/namespace/{quote(repo, safe='')}/blobs/{digest}/metainfo"

        async def served() -> bytes | None:
            async with self.http.get(url) as r:
                if r.status == 200:
                    return await r.read()
                assert r.status == 202, (r.status, await r.text())  # 202: the origin is still fetching it
                return None

        metainfo = await until(served, timeout=DEADLINE, what=f"the origin's metainfo of {digest}")
        h = digest.hex
        path = self.herd.workdir / "origin" / "cache" / "sha256" / h[0:2] / h[2:4] / h
        return await self.seeder.seed(metainfo, path, self.announce_url)

    async def seed_image(self, image: Image) -> None:
        for digest in [image.manifest_digest, *image.blobs]:
            await self.seed(image.repo, digest)

    async def metric(self, agent: Agent, name: str, **labels: str) -> float:
        async with self.http.get(f"{agent.server}/metrics") as r:
            text = await r.text()
        return metric(text, name, 0.0, **labels)


@dataclass
class Image:
    repo: str
    tag: str
    manifest_digest: Digest
    manifest: bytes
    blobs: dict[Digest, bytes]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(herd: Herd) -> AsyncIterator[Cluster]:
    seeder = await P2PSession.start(
        P2PConfig(listen=ListenConfig(host="127.0.0.1", port=0), stats_interval=0.1, min_announce_interval=1,
                  seed_idle_time=0),
        Metrics("test-origin-seeder"), role="origin",
    )
    sup = Supervisor(herd.workdir / "agents")
    origin = herd.origin.addr
    tracker_config = write_overlay(
        sup.workdir / "config" / "tracker.yaml",
        CONFIG_ROOT / "tracker" / "development.yaml",
        {
            "origins": {"hosts": [origin], "max_replica": 1},
            "origin_p2p": {origin: f"127.0.0.1:{seeder.listen_port}"},
            "announce_interval": "1s",
        },
    )
    tracker = Process("tracker", "tracker", free_port(), tracker_config, sup.log_dir / "tracker.log")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        c = Cluster(herd, sup, tracker, [], seeder, http)
        try:
            await asyncio.to_thread(sup.start, tracker)
            for name in ("agent-one", "agent-two"):
                c.agents.append(await asyncio.to_thread(c.start_agent, name, tracker.addr))
            yield c
        finally:
            await asyncio.to_thread(sup.stop_all)
            await seeder.close()


async def get(http: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, bytes, dict]:
    async with http.get(url, **kwargs) as r:
        return r.status, await r.read(), dict(r.headers)


def error_codes(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


# ---------------------------------------------------------------------------- tests


async def test_pull_image_through_the_agent_registry(cluster: Cluster) -> None:
    image = await cluster.push_image("test/agent-pull", "v1", [os.urandom(3 * MiB + 17), os.urandom(1000)])
    await cluster.seed_image(image)
    agent, http = cluster.agents[0], cluster.http
    base = f"{agent.registry}/v2/{image.repo}"

    status, _, headers = await get(http, f"{agent.registry}/v2/")
    assert status == 200 and headers["Docker-Distribution-API-Version"] == "registry/2.0"

    status, body, headers = await get(http, f"{base}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST})
    assert status == 200, body
    assert body == image.manifest
    assert headers["Docker-Content-Digest"] == str(image.manifest_digest)
    status, body, _ = await get(http, f"{base}/manifests/{image.manifest_digest}", headers={"Accept": OCI_MANIFEST})
    assert status == 200 and body == image.manifest

    big = max(image.blobs, key=lambda d: len(image.blobs[d]))
    async with http.head(f"{base}/blobs/{big}") as r:
        assert r.status == 200
        assert int(r.headers["Content-Length"]) == len(image.blobs[big])
    assert not agent.cached(big).exists(), "a HEAD must not download the blob"

    for digest, data in image.blobs.items():
        status, body, headers = await get(http, f"{base}/blobs/{digest}")
        assert status == 200 and body == data, digest
        assert headers["Docker-Content-Digest"] == str(digest)
        assert agent.cached(digest).read_bytes() == data
    status, body, headers = await get(http, f"{base}/blobs/{big}", headers={"Range": "bytes=10-19"})
    assert status == 206 and body == image.blobs[big][10:20]

    # The agent server: tags (repo:tag percent-encoded) and generic blobs.
    status, body, _ = await get(http, f"{agent.server}/tags/{quote(f'{image.repo}:{image.tag}', safe='')}")
    assert status == 200 and body.decode() == str(image.manifest_digest)
    status, body, _ = await get(http, f"{agent.server}/namespace/{quote(image.repo, safe='')}/blobs/{big}")
    assert status == 200 and body == image.blobs[big]
    assert await cluster.metric(agent, "kraken_p2p_download_bytes_total", source="origin") >= len(image.blobs[big])

    async with http.post(f"{base}/blobs/uploads/", data=b"") as r:
        assert r.status == 405 and error_codes(await r.read()) == ["UNSUPPORTED"]
        assert r.headers["Allow"] == ""  # RFC 9110: a 405 names what is allowed, here nothing
    async with http.put(f"{base}/manifests/{image.tag}", data=image.manifest) as r:
        assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
    log = agent.log()
    assert "Added new torrent" in log and "peer connected" in log and "Torrent complete" in log


async def test_unknown_tag_and_blob_are_404_not_500(cluster: Cluster) -> None:
    agent, http = cluster.agents[0], cluster.http
    status, body, _ = await get(http, f"{agent.registry}/v2/test/nothing-here/manifests/latest")
    assert status == 404 and error_codes(body) == ["MANIFEST_UNKNOWN"]
    missing = Digest.of_bytes(b"never pushed")
    status, body, _ = await get(http, f"{agent.registry}/v2/test/nothing-here/blobs/{missing}")
    assert status == 404 and error_codes(body) == ["BLOB_UNKNOWN"]
    status, body, _ = await get(http, f"{agent.registry}/v2/test/nothing-here/manifests/{missing}")
    assert status == 404 and error_codes(body) == ["MANIFEST_UNKNOWN"]
    status, _, _ = await get(http, f"{agent.server}/namespace/test%2Fnothing-here/blobs/{missing}")
    assert status == 404
    status, _, _ = await get(http, f"{agent.server}/tags/test%2Fnothing-here:latest")
    assert status == 404


async def test_invalid_digests_namespaces_and_tags_are_400(cluster: Cluster) -> None:
    """Strict digests (``sha256:<63 hex>\\n`` used to pass and answer 503) and one name grammar
    on the agent server and the tracker, as on the origin."""
    agent, http = cluster.agents[0], cluster.http
    newline, digest = "sha256:" + "a" * 63 + "%0A", Digest.of_bytes(b"never pushed")
    for url in (
        f"{agent.server}/namespace/test%2Fx/blobs/{newline}",
        f"{agent.server}/namespace/..%2F..%2Fetc/blobs/{digest}",
        f"{agent.server}/namespace/a%00b/blobs/{digest}",
        f"{agent.server}/namespace/{'x' * 5000}/blobs/{digest}",
        f"{agent.server}/tags/test%2Fx:.hidden",
        f"{agent.server}/tags/Upper%2Fcase:latest",
        f"http://{cluster.tracker.addr}/namespace/..%2F..%2Fetc/blobs/{digest}/metainfo",
        f"http://{cluster.tracker.addr}/namespace/test%2Fx/blobs/{newline}/metainfo",
    ):
        status, _, _ = await get(http, url)
        assert status == 400, url
    status, body, _ = await get(http, f"{agent.registry}/v2/test/x/blobs/{newline}")
    assert status == 400 and error_codes(body) == ["DIGEST_INVALID"]


async def test_empty_blob_is_served_without_a_torrent(cluster: Cluster) -> None:
    repo = "test/agent-empty"
    digest = await cluster.push_blob(repo, b"")
    agent = cluster.agents[0]
    async with cluster.http.head(f"{agent.registry}/v2/{repo}/blobs/{digest}") as r:
        assert r.status == 200 and r.headers["Content-Length"] == "0"
    status, body, _ = await get(cluster.http, f"{agent.registry}/v2/{repo}/blobs/{digest}")
    assert status == 200 and body == b""
    assert agent.cached(digest).exists()


async def test_second_agent_gets_the_blob_from_the_first(cluster: Cluster) -> None:
    repo = "test/agent-peers"
    data = os.urandom(5 * MiB)
    digest = await cluster.push_blob(repo, data)
    ih = await cluster.seed(repo, digest)
    one, two = cluster.agents
    url = lambda a: f"{a.server}/namespace/{quote(repo, safe='')}/blobs/{digest}"  # noqa: E731

    # Concurrent requests on one agent share one download.
    before = await cluster.metric(one, "kraken_agent_blob_fetches_total", result="downloaded")
    answers = await asyncio.gather(*(get(cluster.http, url(one)) for _ in range(5)))
    assert all(status == 200 and body == data for status, body, _ in answers)
    assert await cluster.metric(one, "kraken_agent_blob_fetches_total", result="downloaded") == before + 1

    # The origin stops seeding: the second agent can only get the bytes from the first.
    await cluster.seeder.remove(ih)
    peer_before = await cluster.metric(two, "kraken_p2p_download_bytes_total", source="peer")
    status, body, _ = await get(cluster.http, url(two))
    assert status == 200 and body == data
    assert await cluster.metric(two, "kraken_p2p_download_bytes_total", source="peer") - peer_before >= len(data)

    async def uploaded() -> bool:  # the session refreshes upload counters every stats_interval
        return await cluster.metric(one, "kraken_p2p_upload_bytes_total") >= len(data)

    await until(uploaded, DEADLINE, what="the first agent to count its upload")


async def test_delete_removes_the_blob_from_the_cache(cluster: Cluster) -> None:
    repo = "test/agent-delete"
    data = os.urandom(300_000)
    digest = await cluster.push_blob(repo, data)
    await cluster.seed(repo, digest)
    agent = cluster.agents[1]
    status, body, _ = await get(cluster.http, f"{agent.server}/namespace/{quote(repo, safe='')}/blobs/{digest}")
    assert status == 200 and body == data
    async with cluster.http.delete(f"{agent.server}/blobs/{digest}") as r:
        assert r.status == 204
    assert not agent.cached(digest).exists()
    async with cluster.http.delete(f"{agent.server}/blobs/{digest}") as r:
        assert r.status == 404
    status, body, _ = await get(cluster.http, f"{agent.registry}/v2/{repo}/blobs/{digest}")
    assert status == 200 and body == data  # downloaded again


async def test_callers_outside_allowed_cidrs_get_403_on_both_ports(cluster: Cluster) -> None:
    """The agent answers only callers in ``allowed_cidrs``, by the connection's address: the
    default (development) list refuses this host's own non-loopback address; a list of
    127.0.0.1 alone refuses 127.0.0.3. The registry says DENIED, the server ``{"error"}``;
    ``/health`` answers everyone; each refused address is logged once."""
    digest = Digest.of_bytes(b"allow")
    strict = await asyncio.to_thread(cluster.start_agent, "agent-allow", cluster.tracker.addr,
                                     {"allowed_cidrs": ["127.0.0.1/32"]})
    try:
        for agent, stranger in ((cluster.agents[0], non_loopback_address()), (strict, "127.0.0.3")):
            async with session_from(stranger) as s:
                for _ in range(3):
                    async with s.get(f"{agent.registry}/v2/") as r:
                        assert r.status == 403 and error_codes(await r.read()) == ["DENIED"]
                async with s.get(f"{agent.server}/tags/test%2Fx:v1") as r:
                    assert r.status == 403
                    assert await r.json() == {"error": f"{stranger} is not in the agent's allowed_cidrs"}
                async with s.delete(f"{agent.server}/blobs/{digest}") as r:
                    assert r.status == 403
                async with s.post(f"{agent.server}/preload/tags/test/x:v1") as r:
                    assert r.status == 403
                async with s.get(f"{agent.server}/health") as r:
                    assert r.status == 200
            log = agent.log()
            assert log.count(f"request refused: caller not in allowed_cidrs peer={stranger}") == 1, log[-3000:]
        status, _, _ = await get(cluster.http, f"{strict.registry}/v2/")  # 127.0.0.1 is allowed
        assert status == 200
        for port in (strict.process.port, strict.server_port):  # 3 refusals on each
            assert await cluster.metric(strict, "kraken_http_denied_total", port=str(port)) == 3
    finally:
        await asyncio.to_thread(cluster.supervisor.stop, "agent-allow")


async def test_preload_is_a_post(cluster: Cluster) -> None:
    """GET starts nothing (405, Allow: POST); a POST reaches the runtime (none here: 503)."""
    agent = cluster.agents[0]
    async with cluster.http.get(f"{agent.server}/preload/tags/test/x:v1") as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"
        assert "POST" in (await r.json())["error"]
    async with cluster.http.post(f"{agent.server}/preload/tags/test/x:v1",
                                 params={"runtime": "docker"}) as r:
        assert r.status in (502, 503), await r.text()


async def test_tracker_down_is_503_then_pulls_work_once_it_is_back(cluster: Cluster) -> None:
    repo = "test/agent-tracker-down"
    data = os.urandom(200_000)
    digest = await cluster.push_blob(repo, data)
    await cluster.seed(repo, digest)
    agent = cluster.agents[1]
    await asyncio.to_thread(cluster.supervisor.stop, "tracker")
    try:
        status, body, _ = await get(cluster.http, f"{agent.registry}/v2/{repo}/blobs/{digest}")
        assert status == 503 and error_codes(body) == ["UNAVAILABLE"]
        assert "tracker unreachable" in agent.log()
        async with cluster.http.get(f"{agent.server}/readiness") as r:
            assert r.status == 503
    finally:
        await asyncio.to_thread(cluster.supervisor.start, cluster.tracker)
    status, body, _ = await get(cluster.http, f"{agent.registry}/v2/{repo}/blobs/{digest}")
    assert status == 200 and body == data
    async with cluster.http.get(f"{agent.server}/readiness") as r:
        assert r.status == 200


async def test_bytes_that_fail_sha256_never_enter_the_cache(cluster: Cluster, tmp_path: Path) -> None:
    """A tracker hands out metainfo of other bytes under the digest's name; a seeder serves
    those bytes. Every piece matches the metainfo, only the whole-blob sha256 catches it.
    One piece: served after the download, so the client gets a 503 (a blob of several pieces
    streams, and the mismatch cuts the stream: tests/cluster/test_agent_streaming.py)."""
    wanted = Digest.of_bytes(b"the real blob" * 1000)
    bad = tmp_path / wanted.hex
    bad.write_bytes(os.urandom(600_000))
    metainfo = await asyncio.to_thread(generate_metainfo, bad, wanted.hex, 1 << 20)
    async with running_tracker() as fake:
        fake_tracker: AnnounceTrackerForTests = fake

        async def serve_metainfo(_: web.Request) -> web.Response:
            return web.Response(body=metainfo, content_type="application/x-bittorrent")

        # running_tracker's app only announces; the agent also asks it for metainfo.
        app = web.Application()
        app.router.add_get("/namespace/{ns:.+}/blobs/{digest}/metainfo", serve_metainfo)
        app.router.add_get("/announce", fake_tracker.announce)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        addr = f"127.0.0.1:{runner.addresses[0][1]}"
        try:
            await cluster.seeder.seed(metainfo, bad, f"http://{addr}/announce")
            agent = await asyncio.to_thread(cluster.start_agent, "agent-fooled", addr)
            status, body, _ = await get(cluster.http, f"{agent.registry}/v2/test/agent-bad/blobs/{wanted}")
            assert status == 503 and error_codes(body) == ["UNAVAILABLE"], body
            assert not agent.cached(wanted).exists()
            assert list((agent.store / "download").iterdir()) == []
            assert "does not match its digest" in agent.log()
            assert await cluster.metric(agent, "kraken_agent_blob_fetches_total", result="corrupt") == 1
        finally:
            await cluster.seeder.remove(info_hash(metainfo))
            await asyncio.to_thread(cluster.supervisor.stop, "agent-fooled")
            await runner.cleanup()


async def test_restarted_agent_serves_its_cache_with_the_tracker_down(cluster: Cluster) -> None:
    image = await cluster.push_image("test/agent-warm", "v1", [os.urandom(MiB)])
    await cluster.seed_image(image)
    agent, http = cluster.agents[0], cluster.http
    base = f"{agent.registry}/v2/{image.repo}"
    status, body, _ = await get(http, f"{base}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST})
    assert status == 200 and body == image.manifest
    for digest in image.blobs:
        assert (await get(http, f"{base}/blobs/{digest}"))[0] == 200

    await asyncio.to_thread(cluster.supervisor.stop, "tracker")
    try:
        await asyncio.to_thread(cluster.supervisor.restart, agent.process.name)
        status, body, _ = await get(http, f"{base}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST})
        assert status == 200 and body == image.manifest
        for digest, data in image.blobs.items():
            status, body, _ = await get(http, f"{base}/blobs/{digest}")
            assert status == 200 and body == data
    finally:
        await asyncio.to_thread(cluster.supervisor.start, cluster.tracker)


async def test_two_agents_pulling_one_blob_at_once_both_get_it(cluster: Cluster) -> None:
    repo = "test/agent-together"
    data = os.urandom(4 * MiB + 3)
    digest = await cluster.push_blob(repo, data)
    await cluster.seed(repo, digest)
    answers = await asyncio.gather(
        *(get(cluster.http, f"{a.registry}/v2/{repo}/blobs/{digest}") for a in cluster.agents)
    )
    assert [(status, body == data) for status, body, _ in answers] == [(200, True), (200, True)]


async def test_a_restarted_agent_seeds_a_cached_blob_again_once_it_is_pulled(cluster: Cluster) -> None:
    repo = "test/agent-reseed"
    data = os.urandom(3 * MiB)
    digest = await cluster.push_blob(repo, data)
    ih = await cluster.seed(repo, digest)
    one, two = cluster.agents
    url = lambda a: f"{a.server}/namespace/{quote(repo, safe='')}/blobs/{digest}"  # noqa: E731
    assert (await get(cluster.http, url(one)))[0] == 200

    await asyncio.to_thread(cluster.supervisor.restart, one.process.name)
    # A restart leaves the torrent out of the session; the next pull (a cache hit) brings it back.
    status, body, _ = await get(cluster.http, url(one))
    assert status == 200 and body == data

    async def reseeded() -> bool:
        return f"seeding cached blob again digest={digest}" in one.log()

    await until(reseeded, DEADLINE, what="the restarted agent to seed its cached copy")
    # With the origin's seed gone, the second agent can only get the bytes from the first.
    await cluster.seeder.remove(ih)
    status, body, _ = await get(cluster.http, url(two))
    assert status == 200 and body == data
    assert await cluster.metric(two, "kraken_p2p_download_bytes_total", source="peer") >= len(data)


async def test_head_on_the_agent_server_downloads_nothing(cluster: Cluster) -> None:
    repo = "test/agent-head"
    data = os.urandom(100_000)
    digest = await cluster.push_blob(repo, data)
    await cluster.seed(repo, digest)
    agent = cluster.agents[1]
    async with cluster.http.head(f"{agent.server}/namespace/{quote(repo, safe='')}/blobs/{digest}") as r:
        assert r.status == 200 and r.headers["Content-Length"] == str(len(data))
    assert not agent.cached(digest).exists()
    missing = Digest.of_bytes(b"never pushed")
    async with cluster.http.head(f"{agent.server}/namespace/{quote(repo, safe='')}/blobs/{missing}") as r:
        assert r.status == 404


async def test_a_download_that_makes_no_progress_falls_back_to_http_from_the_origin(cluster: Cluster) -> None:
    """The tracker hands out the origin's P2P address (the test seeder), but nothing seeds this
    blob there: P2P receives nothing, and after download.fallback_after the agent reads the
    blob from its origin over HTTP."""
    repo = "test/agent-fallback"
    data = os.urandom(2 * MiB + 5)
    digest = await cluster.push_blob(repo, data)  # pushed, never seeded
    agent = await asyncio.to_thread(cluster.start_agent, "agent-fallback", cluster.tracker.addr, {
        "origins": {"hosts": [cluster.herd.origin.addr]},
        "download": {"fallback_after": "1s"},
    })
    try:
        status, body, _ = await get(cluster.http, f"{agent.registry}/v2/{repo}/blobs/{digest}")
        assert status == 200 and body == data
        assert agent.cached(digest).read_bytes() == data
        assert list((agent.store / "download").iterdir()) == []
        assert "P2P download made no progress" in agent.log()
        assert await cluster.metric(agent, "kraken_agent_http_fallbacks_total", result="ok") == 1
        assert await cluster.metric(agent, "kraken_p2p_download_bytes_total", source="origin") == 0

        async def seeding() -> bool:  # fetched over HTTP, then offered to peers like a download
            return f"seeding cached blob again digest={digest}" in agent.log()

        await until(seeding, DEADLINE, what="the fallen-back blob to be seeded")
    finally:
        await asyncio.to_thread(cluster.supervisor.stop, "agent-fallback")


async def test_a_small_blob_is_read_over_http_from_its_origin_then_seeded(cluster: Cluster) -> None:
    """A blob of at most download.small_blob_max bytes (a manifest, a config) comes over HTTP
    from its owning origin at once, not through P2P: nothing seeds this one on the P2P side, so
    only that path can deliver it before the fallback's 30 s. It is seeded afterwards."""
    repo = "test/agent-small"
    data = os.urandom(1000)
    digest = await cluster.push_blob(repo, data)  # pushed, never seeded
    agent = await asyncio.to_thread(cluster.start_agent, "agent-small", cluster.tracker.addr, {
        "origins": {"hosts": [cluster.herd.origin.addr]},
    })
    try:
        status, body, _ = await asyncio.wait_for(
            get(cluster.http, f"{agent.registry}/v2/{repo}/blobs/{digest}"), timeout=10)
        assert status == 200 and body == data
        assert agent.cached(digest).read_bytes() == data
        assert await cluster.metric(agent, "kraken_agent_small_blob_reads_total", result="ok") == 1
        assert await cluster.metric(agent, "kraken_agent_http_fallbacks_total", result="ok") == 0
        assert "via=http-small" in agent.log() and "P2P download made no progress" not in agent.log()

        async def seeding() -> bool:
            return f"seeding cached blob again digest={digest}" in agent.log()

        await until(seeding, DEADLINE, what="the small blob to be seeded")
    finally:
        await asyncio.to_thread(cluster.supervisor.stop, "agent-small")
