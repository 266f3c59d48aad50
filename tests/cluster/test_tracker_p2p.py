"""The tracker in a real herd (testfs, origin, tracker, build-index, proxy, two agents, all
real processes): pulls that depend on the tracker getting the protocol right.

Announces from other addresses (fake seeders, a flood of random info-hashes) come from
127.0.0.x sources, while the herd and its agents use 127.0.0.1. The agents' HTTP fallback is
off (``download.fallback_after: 0``), so every byte they return came over P2P, and a swarm the
tracker fails to form shows up as a pull that does not finish within its deadline (well below
the 30 s fallback the defaults would hide it behind).
"""
from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_from_bytes

import aiohttp
import libtorrent as lt
import pytest
from yarl import URL

from kraken.core.digest import Digest
from kraken.core.metainfo import DEFAULT_PIECE_LENGTHS, generate_metainfo, info_hash, piece_length_for
from kraken.devcluster import Process, free_port
from tests.support.cluster import Herd, start_herd
from tests.support.metrics import metric
from tests.support.proxy import Proxy
from tests.support.swarm import REPO, Counters, counters, pull, settled
from tests.support.tracker import Answer, announce_query

PULL_DEADLINE = 15.0  # seconds; the fallback this module turns off would start at 30
PEERS_PER_IP = 8
TORRENTS_PER_IP = 50

OVERRIDES = {
    "tracker": {"limits": {"peers_per_ip": PEERS_PER_IP, "torrents_per_ip": TORRENTS_PER_IP}},
    "origin": {"p2p": {"stats_interval": "200ms"}},
    # Every blob through P2P, small ones too (download.small_blob_max: 0): that is what is tested.
    "agent": {"download": {"fallback_after": 0, "small_blob_max": 0}, "p2p": {"stats_interval": "200ms"}},
}


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    h = start_herd(Path(tmp_path_factory.mktemp("tracker-p2p")), agents=2, overrides=OVERRIDES)
    try:
        yield h
    finally:
        h.stop()


def blob_info_hash(data: bytes, workdir: Path) -> bytes:
    """The info-hash of ``data``'s torrent, generated exactly as the origin does."""
    digest = Digest.of_bytes(data)
    path = workdir / digest.hex
    path.write_bytes(data)
    try:
        metainfo = generate_metainfo(path, digest.hex, piece_length_for(len(data), DEFAULT_PIECE_LENGTHS))
    finally:
        path.unlink()
    return bytes.fromhex(info_hash(metainfo))


# '%' then two hex digits, as raw bytes: percent-encoded by libtorrent as "%25" + the digits.
PERCENT_HEX = re.compile(rb"%[0-9A-Fa-f]{2}")


def blob_whose_info_hash_looks_percent_encoded(workdir: Path) -> tuple[bytes, bytes]:
    """(blob, info_hash), searched offline: about 1 random blob in 2,000 has such a hash."""
    for _ in range(100_000):
        data = os.urandom(1000)
        ih = blob_info_hash(data, workdir)
        if PERCENT_HEX.search(ih):
            return data, ih
    raise AssertionError("no blob found whose info_hash holds '%' and two hex digits")


async def timed_pull(http: aiohttp.ClientSession, herd: Herd, agent_index: int, digest: Digest) -> float:
    """Pull ``digest`` through an agent; the seconds it took (failing past the deadline)."""
    started = time.monotonic()
    got = await asyncio.wait_for(pull(http, herd.agents[agent_index], digest), PULL_DEADLINE)
    assert got[0] == digest
    return time.monotonic() - started


async def counted_pull(http: aiohttp.ClientSession, herd: Herd, agent_index: int, digest: Digest
                       ) -> tuple[float, Counters]:
    """Pull ``digest`` through an agent: the seconds it took and the P2P bytes that agent
    counted for it (from the origin, from peers)."""
    agent = herd.agents[agent_index]
    before = await counters(http, agent)
    elapsed = await timed_pull(http, herd, agent_index, digest)
    return elapsed, await settled(lambda: _since(http, agent, before))


async def _since(http: aiohttp.ClientSession, agent: Process, before: Counters) -> Counters:
    return await counters(http, agent) - before


async def test_two_agents_starting_one_single_piece_blob_at_once_both_get_it_over_p2p(
    herd: Herd, http: aiohttp.ClientSession,
) -> None:
    """A single-piece download starts with one connection, which may go to the other agent
    (a leecher too) while libtorrent drops the origin for the connection limit. libtorrent
    dialled a dropped peer again only after 60 s (``min_reconnect_time``): about one such
    pair in seven waited for the HTTP fallback (here: turned off, so past the deadline)."""
    for _ in range(20):
        digest = await Proxy(herd, http).push_monolithic(REPO, os.urandom(600))
        await asyncio.gather(timed_pull(http, herd, 0, digest), timed_pull(http, herd, 1, digest))


async def test_a_blob_whose_info_hash_holds_percent_and_hex_digits_arrives_over_p2p(
    herd: Herd, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    data, ih = blob_whose_info_hash_looks_percent_encoded(tmp_path)
    assert quote_from_bytes(ih, safe="").count("%25") >= 1
    digest = await Proxy(herd, http).push_monolithic(REPO, data)
    elapsed, delta = await counted_pull(http, herd, 0, digest)
    print(f"info_hash {ih.hex()} pulled in {elapsed:.2f}s: {delta}")
    assert delta.from_origin == len(data)


async def test_a_single_piece_blob_offered_by_two_seeders_is_downloaded_once(
    herd: Herd, http: aiohttp.ClientSession,
) -> None:
    for size in (289, 40_000):  # one block (a manifest) and several blocks of one piece
        data = os.urandom(size)
        digest = await Proxy(herd, http).push_monolithic(REPO, data)
        await timed_pull(http, herd, 0, digest)  # the first agent now seeds it, like the origin
        _, delta = await counted_pull(http, herd, 1, digest)
        print(f"{size} bytes from two seeders: {delta}")
        assert delta.downloaded == size, delta


async def announce_from(source_ip: str, herd: Herd, ih: bytes, port: int, *, left: int) -> Answer:
    """An announce as libtorrent sends it, from ``source_ip`` (a 127.0.0.x address)."""
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
        url = URL(f"{herd.tracker.url}/announce?{announce_query(ih, port, left=left, event='started')}", encoded=True)
        async with http.get(url) as resp:
            return Answer(resp.status, lt.bdecode(await resp.read()))


async def metainfo_info_hash(http: aiohttp.ClientSession, herd: Herd, digest: Digest) -> bytes:
    """The blob's info-hash, from the tracker's metainfo (which also teaches it the digest)."""
    async with http.get(f"{herd.tracker.url}/namespace/{quote(REPO, safe='')}/blobs/{digest}/metainfo") as r:
        assert r.status == 200, await r.text()
        return bytes.fromhex(info_hash(await r.read()))


async def test_fake_seeders_neither_keep_the_origin_from_an_agent_nor_grow_past_the_address_limit(
    herd: Herd, http: aiohttp.ClientSession,
) -> None:
    data = os.urandom(300_000)
    digest = await Proxy(herd, http).push_monolithic(REPO, data)
    ih = await metainfo_info_hash(http, herd, digest)
    # 60 seeders from closed ports, 5 per address (within the address limit): more than a
    # whole answer (50 peers).
    fakes = [(f"127.0.0.{10 + n // 5}", free_port()) for n in range(60)]
    for ip, port in fakes:
        assert (await announce_from(ip, herd, ih, port, left=0)).status == 200
    # 20 more from one address: only the latest PEERS_PER_IP of them stay.
    for _ in range(20):
        answer = await announce_from("127.0.0.30", herd, ih, free_port(), left=0)
    assert answer.body[b"complete"] == 60 + PEERS_PER_IP + 1  # and the origin

    elapsed, delta = await counted_pull(http, herd, 0, digest)
    print(f"pulled past {len(fakes) + 20} fake seeders in {elapsed:.2f}s: {delta}")
    assert delta.from_origin == len(data)


async def test_a_flood_of_torrents_from_one_address_is_refused_and_agents_still_pull(
    herd: Herd, http: aiohttp.ClientSession,
) -> None:
    answers = [await announce_from("127.0.0.40", herd, os.urandom(20), 6881, left=1)
               for _ in range(TORRENTS_PER_IP + 10)]
    assert [a.status for a in answers] == [200] * TORRENTS_PER_IP + [429] * 10
    assert answers[-1].body == {
        b"failure reason": f"too many torrents announced from this address (limit {TORRENTS_PER_IP})".encode()}
    async with http.get(f"{herd.tracker.url}/metrics") as r:
        assert metric(await r.text(), "kraken_tracker_announce_failures_total", reason="limit_ip") == 10

    data = os.urandom(1000)
    digest = await Proxy(herd, http).push_monolithic(REPO, data)
    await timed_pull(http, herd, 1, digest)
