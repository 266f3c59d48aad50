"""TLS on every hop between components (``tls:`` section), with real processes.

The herd: testfs, origin, tracker and build-index serve HTTPS and require the cluster's
client certificate (mTLS); the proxy's registry stays plain HTTP (client-facing, the
default) and calls origin and build-index over mTLS; the agent serves its registry over TLS
without asking for a client certificate and its server (tags, blobs, ``DELETE``, preload)
over mTLS but for the probes and ``/metrics``, calls tracker, build-index and origins over
mTLS. The origin and the agent announce to the HTTPS tracker through their announce relays
(libtorrent on plain HTTP to loopback, the relay on mTLS), and the tracker refuses seeder
announces without a cluster certificate. The agent's HTTP fallback is off, so a pull can only
be P2P.
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import libtorrent as lt
import pytest

from kraken.core.digest import Digest
from kraken.devcluster import Process
from kraken.registry.manifest import OCI_MANIFEST
from tests.support.cluster import Herd, start_herd
from tests.support.metrics import metric
from tests.support.pki import Pki, make_pki
from tests.support.proxy import Proxy, manifest_for
from tests.support.tracker import Answer, announce_query
from tests.support.waiting import until

REPO = "tls/app"
INTERNAL = ("testfs", "origin", "tracker", "build-index")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def herd(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    overrides = {name: {"tls": pki.section()} for name in INTERNAL}
    overrides["proxy"] = {"tls": pki.section(server=False)}
    overrides["agent"] = {"tls": pki.section(), "download": {"fallback_after": 0}}
    probes = {name: pki.probe() for name in (*INTERNAL, "agent")}
    h = start_herd(Path(tmp_path_factory.mktemp("tls")), agents=1, overrides=overrides, probe_tls=probes,
                   origins_announce=True)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
async def sessions(pki: Pki) -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
    """Clients presenting the cluster's certificate, none, or one from another CA."""
    timeout = aiohttp.ClientTimeout(total=60)
    made = {name: aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=pki.context(cert)))
            for name, cert in (("cluster", "client"), ("anonymous", None), ("stranger", "stranger"))}
    made["plain"] = aiohttp.ClientSession(timeout=timeout)
    try:
        yield made
    finally:
        for session in made.values():
            await session.close()


def https(proc: Process, path: str) -> str:
    return f"https://127.0.0.1:{proc.health_port or proc.port}{path}"


def log_of(proc: Process) -> str:
    return proc.log_path.read_text(errors="replace")


@pytest.mark.parametrize("name", INTERNAL)
async def test_internal_components_require_the_cluster_client_certificate(
    herd: Herd, sessions: dict[str, aiohttp.ClientSession], name: str,
) -> None:
    proc = herd[name]
    async with sessions["cluster"].get(https(proc, "/metrics")) as r:
        assert r.status == 200
    async with sessions["anonymous"].get(https(proc, "/metrics")) as r:
        assert r.status == 403
        assert "client certificate" in (await r.json())["error"]
    async with sessions["anonymous"].get(https(proc, "/health")) as r:
        assert r.status == 200  # probes need no certificate
    with pytest.raises(aiohttp.ClientError):  # refused at the handshake
        async with sessions["stranger"].get(https(proc, "/metrics")) as r:
            await r.read()
    with pytest.raises(aiohttp.ClientError):  # TLS only
        async with sessions["plain"].get(f"http://127.0.0.1:{proc.port}/metrics") as r:
            await r.read()
    assert "refused: no client certificate" in log_of(proc)


async def test_agent_server_requires_the_cluster_client_certificate(
    herd: Herd, sessions: dict[str, aiohttp.ClientSession],
) -> None:
    agent = herd.agents[0]
    missing = f"/blobs/sha256:{'0' * 64}"
    async with sessions["cluster"].delete(https(agent, missing)) as r:
        assert r.status == 404  # let through: the blob is not cached
    for method, path in (("DELETE", missing), ("GET", "/tags/tls%2Fapp:v1"),
                         ("GET", f"/namespace/tls%2Fapp/blobs/sha256:{'0' * 64}")):
        async with sessions["anonymous"].request(method, https(agent, path)) as r:
            assert r.status == 403, (method, path)
            assert "client certificate" in (await r.json())["error"]
    for path in ("/health", "/readiness", "/metrics"):  # probes and the scrape
        async with sessions["anonymous"].get(https(agent, path)) as r:
            assert r.status == 200, path
    with pytest.raises(aiohttp.ClientError):  # refused at the handshake
        async with sessions["stranger"].delete(https(agent, missing)) as r:
            await r.read()
    async with sessions["anonymous"].get(f"https://127.0.0.1:{agent.port}/v2/") as r:
        assert r.status == 200  # the registry port never asks for a certificate
    assert "refused: no client certificate" in log_of(agent)


async def announce(session: aiohttp.ClientSession, herd: Herd, ih: bytes, port: int, left: int) -> Answer:
    async with session.get(https(herd.tracker, "/announce?" + announce_query(ih, port, left=left))) as r:
        return Answer(r.status, lt.bdecode(await r.read()))


async def test_a_leecher_announces_without_a_client_certificate(
    herd: Herd, sessions: dict[str, aiohttp.ClientSession],
) -> None:
    answer = await announce(sessions["anonymous"], herd, os.urandom(20), 6881, left=5)
    assert answer.status == 200, answer.body
    assert b"peers" in answer.body


async def test_a_seeder_without_a_client_certificate_is_refused_and_never_handed_out(
    herd: Herd, sessions: dict[str, aiohttp.ClientSession],
) -> None:
    ih = os.urandom(20)
    refused = await announce(sessions["anonymous"], herd, ih, 6882, left=0)
    assert refused.status == 403
    assert refused.body == {b"failure reason": b"seeding requires a cluster certificate"}
    # A host with the cluster certificate (as an agent's relay announces) is not sent there.
    answer = await announce(sessions["cluster"], herd, ih, 6883, left=5)
    assert answer.status == 200, answer.body
    assert all(peer.port != 6882 for peer in answer.peers)
    assert answer.body[b"complete"] == 0
    assert "announce refused: no client certificate" in log_of(herd.tracker)
    async with sessions["cluster"].get(https(herd.tracker, "/metrics")) as r:
        assert metric(await r.text(), "kraken_tracker_announce_failures_total", reason="no_certificate") >= 1


async def test_push_through_the_proxy_and_p2p_pull_with_every_hop_on_tls(
    herd: Herd, pki: Pki, sessions: dict[str, aiohttp.ClientSession],
) -> None:
    proxy = Proxy(herd, sessions["plain"])
    layer = os.urandom(3 << 20)
    config = b'{"architecture": "amd64", "os": "linux"}'
    layer_digest = await proxy.push_monolithic(REPO, layer)  # proxy -> origin -> testfs
    config_digest = await proxy.push_monolithic(REPO, config)
    manifest = manifest_for((config_digest, len(config)), [(layer_digest, len(layer))], OCI_MANIFEST)
    r = await proxy.put_manifest(REPO, "v1", manifest, OCI_MANIFEST)  # proxy -> build-index
    assert r.status == 201, await r.text()
    manifest_digest = Digest.of_bytes(manifest)

    cluster = sessions["cluster"]
    tag = quote(f"{REPO}:v1", safe=":")
    async with cluster.get(https(herd.build_index, f"/tags/{tag}")) as r:
        assert r.status == 200 and (await r.text()).strip() == str(manifest_digest)
    metainfo = f"/namespace/{quote(REPO, safe='')}/blobs/{layer_digest}/metainfo"
    async with cluster.get(https(herd.tracker, metainfo)) as r:  # tracker -> origin over mTLS
        assert r.status == 200, await r.text()
    async with sessions["anonymous"].get(https(herd.tracker, metainfo)) as r:
        assert r.status == 403

    # The agent's registry over TLS with the CA only (no client certificate asked);
    # agent -> build-index for the tag, HTTPS announces, pieces from the origin over P2P.
    agent = herd.agents[0]
    registry = f"https://127.0.0.1:{agent.port}/v2/{REPO}"
    anonymous = sessions["anonymous"]
    async with anonymous.get(f"{registry}/manifests/v1", headers={"Accept": OCI_MANIFEST}) as r:
        assert r.status == 200, await r.text()
        assert await r.read() == manifest
    async with anonymous.get(f"{registry}/blobs/{layer_digest}") as r:
        assert r.status == 200, await r.text()
        assert await r.read() == layer
    assert "tracker error" not in log_of(agent)
    async with cluster.get(https(agent, "/metrics")) as r:  # the origin served the pieces
        assert metric(await r.text(), "kraken_p2p_download_bytes_total", source="origin") >= len(layer)

    async def certified_announces() -> bool:
        async with cluster.get(https(herd.tracker, "/metrics")) as r:
            text = await r.text()
        return metric(text, "kraken_tracker_announce_certificates_total", 0, certificate="verified") >= 4

    # The agent's two downloads and the origin's two seeds announced through their relays,
    # each with the cluster certificate (the tracker served the origin's as a seeder).
    await until(certified_announces, 30, "four announces with the cluster certificate", interval=0.5)
    for proc in (agent, herd.origin):  # the origin's announces are seeders': left=0
        assert "announce relay reaches the tracker" in log_of(proc) and "status=200" in log_of(proc), proc.name
        assert "announce relay cannot forward" not in log_of(proc)
