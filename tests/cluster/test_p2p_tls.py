"""Piece traffic over TLS (``p2p.tls``), with real processes.

A herd (testfs, origin, tracker, build-index, proxy) and two agents; the origin and the agents
run with ``p2p.tls`` (the cluster CA embedded in every torrent, a peer certificate with SAN
``DNS:*``, its key protected by a passphrase). The origin's P2P upload is capped so the
agents have time to trade pieces, and the agents' HTTP fallback is off, so a pull can only be
P2P.

- Both agents pull a blob at once: the exact bytes, the torrent is an SSL torrent rooted at
  the cluster CA, and the counters show bytes from the origin and between the agents.
- A host whose peer certificate comes from another CA (a plain libtorrent session) gets no
  piece from the swarm and the origin logs the refused handshake; a host without
  ``p2p.tls`` refuses the SSL torrent with an error that says why.
"""
from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import libtorrent as lt
import pytest

from kraken.config import ListenConfig
from kraken.core.digest import Digest
from kraken.metrics import Metrics
from kraken.p2p.config import P2PConfig, P2PTLSConfig
from kraken.p2p.session import DownloadError, P2PSession
from tests.support.cluster import Herd, start_herd
from tests.support.pki import Pki, make_pki
from tests.support.proxy import Proxy
from tests.support.swarm import REPO, STATS_INTERVAL, counters, pull, settled
from tests.support.waiting import until, wait_until

MB = 1 << 20
REFUSED = "peer refused: TLS handshake failed"
BLOB_SIZE = 24 * MB
ORIGIN_UPLOAD_CAP = 8 * MB


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def herd(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    stats = f"{int(STATS_INTERVAL * 1000)}ms"
    overrides = {
        "origin": {"metainfo": {"piece_lengths": {0: "1MB"}},
                   "p2p": {"tls": pki.p2p_section(), "upload_rate_limit": ORIGIN_UPLOAD_CAP, "stats_interval": stats}},
        "agent": {"p2p": {"tls": pki.p2p_section(), "stats_interval": stats}, "download": {"fallback_after": 0}},
    }
    h = start_herd(Path(tmp_path_factory.mktemp("p2ptls")), agents=2, overrides=overrides)
    try:
        yield h
    finally:
        h.stop()



def log_of(herd: Herd, name: str) -> str:
    return herd[name].log_path.read_text(errors="replace")


async def metainfo_of(http: aiohttp.ClientSession, herd: Herd, digest: Digest) -> bytes:
    url = f"http://127.0.0.1:{herd.tracker.port}/namespace/{quote(REPO, safe='')}/blobs/{digest}/metainfo"

    async def fetch() -> bytes | None:
        async with http.get(url) as r:
            return await r.read() if r.status == 200 else None

    return await until(fetch, timeout=60, what="the blob's metainfo")


def stranger_download(metainfo: bytes, announce: str, pki: Pki, save: Path, refused: Callable[[], bool]) -> int:
    """Bytes a libtorrent session presenting ``stranger-peer`` (another CA) has got once
    ``refused`` holds (the origin logged the refused handshake: the attempt is over)."""
    session = lt.session({"listen_interfaces": "127.0.0.1:0s", "enable_dht": False, "enable_lsd": False,
                          "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
                          "enable_incoming_utp": False, "min_announce_interval": 1})
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(metainfo)
    atp.save_path = str(save)
    atp.trackers = [announce]
    atp.flags = (atp.flags & ~lt.torrent_flags.auto_managed) | lt.torrent_flags.paused
    handle = session.add_torrent(atp)
    handle.set_ssl_certificate(pki["stranger-peer.pem"], pki["stranger-peer-key.pem"], "", "")
    handle.resume()
    wait_until(refused, 30, message="the origin's log of the refused handshake")
    received = handle.status().total_payload_download
    session.remove_torrent(handle, lt.session.delete_files)
    return received


def session_config(tls: P2PTLSConfig) -> P2PConfig:
    return P2PConfig(listen=ListenConfig(host="127.0.0.1", port=0), stats_interval=0.1, min_announce_interval=1,
                     tls=tls)


async def test_agents_pull_over_tls_and_trade_pieces(herd: Herd, pki: Pki, http: aiohttp.ClientSession) -> None:
    digest = await Proxy(herd, http).push_streamed(REPO, os.urandom(BLOB_SIZE))
    agents = herd.agents
    before = {p.name: await counters(http, p) for p in [herd.origin, *agents]}
    results = await asyncio.wait_for(asyncio.gather(*(pull(http, a, digest) for a in agents)), timeout=120)
    assert results == [(digest, BLOB_SIZE)] * len(agents)

    async def deltas() -> dict[str, object]:
        return {p.name: await counters(http, p) - before[p.name] for p in [herd.origin, *agents]}

    delta: dict = await settled(deltas)
    report = f"per process {delta}"
    for agent in agents:
        assert delta[agent.name].downloaded >= BLOB_SIZE, report
        assert delta[agent.name].from_origin > 0, report
    # The origin is capped: the agents got part of the blob from each other, over TLS too.
    assert sum(delta[a.name].from_peers for a in agents) > 0, report

    ti = lt.torrent_info(await metainfo_of(http, herd, digest))
    assert "BEGIN CERTIFICATE" in ti.ssl_cert()  # an SSL torrent rooted at the cluster CA
    assert re.search(r"P2P session started .*tls=[Tt]rue", log_of(herd, herd.origin.name))


async def test_a_host_without_a_cluster_peer_certificate_gets_no_piece(
    herd: Herd, pki: Pki, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    digest = await Proxy(herd, http).push_streamed(REPO, os.urandom(4 * MB))
    metainfo = await metainfo_of(http, herd, digest)
    announce = f"http://127.0.0.1:{herd.tracker.port}/announce"

    # A host with a peer certificate another CA signed (a plain libtorrent session: Kraken's
    # own refuses such files at start): every handshake with the origin fails, so not one
    # byte arrives.
    before = log_of(herd, herd.origin.name).count(REFUSED)
    received = await asyncio.to_thread(stranger_download, metainfo, announce, pki, tmp_path / "stranger",
                                       lambda: log_of(herd, herd.origin.name).count(REFUSED) > before)
    assert received == 0

    # No p2p.tls at all: the SSL torrent is refused, with the reason.
    plain = await P2PSession.start(session_config(P2PTLSConfig()), Metrics("plain"))
    try:
        with pytest.raises(DownloadError, match="SSL torrent"):
            await plain.download(metainfo, tmp_path / "plain", announce, timeout=8)
    finally:
        await plain.close()
