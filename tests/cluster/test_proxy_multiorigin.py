"""The proxy in front of several origins on one hash ring, all real processes.

The proxy streams an upload's bytes to a random origin while they arrive (the digest, hence
the owner, is known only at the client's final PUT) and at commit either commits there, when
that origin owns the digest, or sends the staged blob whole to the owner and drops the stream.
These tests push by raw HTTP (POST, one PATCH, PUT ?digest=) and check where blobs end up.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from kraken.core.digest import Digest
from kraken.ring import HashRing
from tests.support.cluster import Herd, start_herd
from tests.support.metrics import metric
from tests.support.waiting import until

# With 32 blobs each streamed to one of 3 origins picked at random, the stream went to the owner
# (max_replica=1) for none of them with probability (2/3)**32 ~ 2e-6, and for all of them with
# probability (1/3)**32 ~ 5e-16: both paths occur in practically every run.
BLOBS = 32


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    """Three origins, each blob owned by one of them."""
    h = start_herd(Path(tmp_path_factory.mktemp("herd")), origins=3, max_replica=1)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def replicated_herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    """Three origins, each blob owned by two of them."""
    h = start_herd(Path(tmp_path_factory.mktemp("replicated")), origins=3, max_replica=2)
    try:
        yield h
    finally:
        h.stop()



def random_blobs(count: int) -> list[tuple[bytes, Digest]]:
    """Distinct blobs of a few hundred KB."""
    blobs = []
    for i in range(count):
        data = os.urandom(200_000 + 7_919 * i)
        blobs.append((data, Digest.of_bytes(data)))
    return blobs


async def push(session: aiohttp.ClientSession, herd: Herd, repo: str, data: bytes) -> Digest:
    """Push one blob the way docker does: POST, one PATCH with the whole body, PUT ?digest=."""
    digest = Digest.of_bytes(data)
    base = URL(herd.proxy.url)
    async with session.post(base / "v2" / repo / "blobs/uploads/", data=b"") as r:
        assert r.status == 202, await r.text()
        location = base.join(URL(r.headers["Location"]))
    headers = {"Content-Type": "application/octet-stream"}
    async with session.patch(location, data=data, headers=headers) as r:
        assert r.status == 202, await r.text()
        location = base.join(URL(r.headers["Location"]))
    async with session.put(location.update_query(digest=str(digest))) as r:
        assert r.status == 201, await r.text()
    return digest


async def pull(session: aiohttp.ClientSession, herd: Herd, repo: str, digest: Digest) -> bytes:
    async with session.get(f"{herd.proxy.url}/v2/{repo}/blobs/{digest}") as r:
        assert r.status == 200, await r.text()
        return await r.read()


async def cached_on(session: aiohttp.ClientSession, herd: Herd, repo: str, digest: Digest) -> set[str]:
    """The origins whose cache holds the blob (their local-only HEAD, which never fetches)."""
    async def has(url: str) -> bool:
        async with session.head(f"{url}/internal/namespace/{quote(repo, safe='')}/blobs/{digest}") as r:
            assert r.status in (200, 404), r.status
            return r.status == 200

    origins = herd.origins
    found = await asyncio.gather(*(has(o.url) for o in origins))
    return {o.addr for o, hit in zip(origins, found, strict=True) if hit}


async def cached_exactly_on(
    session: aiohttp.ClientSession, herd: Herd, repo: str, digest: Digest, origins: set[str]
) -> bool:
    return await cached_on(session, herd, repo, digest) == origins


async def uploads_path_counts(session: aiohttp.ClientSession, herd: Herd) -> dict[str, float]:
    async with session.get(f"{herd.proxy.url}/metrics") as r:
        text = await r.text()
    return {path: metric(text, "kraken_proxy_blobs_uploaded_total", path=path)
            for path in ("streamed", "sent_at_commit")}


def leftovers(herd: Herd) -> list[Path]:
    """Upload files still on an origin, and blobs still staged on the proxy."""
    files = [p for o in herd.origins for p in (herd.workdir / o.name / "uploads").iterdir()]
    return files + [p for p in (herd.workdir / "proxy" / "cache").rglob("*") if p.is_file()]


async def test_blobs_land_on_their_owner_whether_streamed_or_sent_at_commit(
    herd: Herd, session: aiohttp.ClientSession
) -> None:
    repo = "multi/app"
    hosts = [o.addr for o in herd.origins]
    ring = HashRing(hosts, 1)
    blobs = random_blobs(BLOBS)
    before = await uploads_path_counts(session, herd)

    await asyncio.gather(*(push(session, herd, repo, data) for data, _ in blobs))

    after = await uploads_path_counts(session, herd)
    streamed = after["streamed"] - before["streamed"]
    sent = after["sent_at_commit"] - before["sent_at_commit"]
    assert streamed > 0 and sent > 0, (streamed, sent)
    assert streamed + sent == BLOBS
    for data, digest in blobs:
        owner = ring.owners(digest)
        assert await cached_on(session, herd, repo, digest) == set(owner)  # the owner, nowhere else
        async with session.get(f"{herd.origins[-1].url}/blobs/{digest}/locations") as r:
            assert r.headers["Origin-Locations"] == owner[0]
        assert await pull(session, herd, repo, digest) == data
    # The streams to origins that did not own their blob were dropped, not left to expire.
    await until(lambda: not leftovers(herd), what="no stray uploads")


async def test_a_blob_ends_up_on_both_owners_with_two_replicas(
    replicated_herd: Herd, session: aiohttp.ClientSession
) -> None:
    herd = replicated_herd
    repo = "replicated/app"
    ring = HashRing([o.addr for o in herd.origins], 2)
    blobs = random_blobs(4)
    for data, _ in blobs:
        await push(session, herd, repo, data)

    for data, digest in blobs:
        owners = set(ring.owners(digest))
        assert len(owners) == 2
        await until(partial(cached_exactly_on, session, herd, repo, digest, owners),
                    what=f"{digest} on both owners {sorted(owners)}")
        assert await pull(session, herd, repo, digest) == data
    # One origin took each push, the other owner got it as a replica from that origin (counted
    # just after the copy is cached, hence polled).
    expected = {"push": len(blobs), "replica": len(blobs)}

    async def counted() -> bool:
        return await _upload_sources(session, herd) == expected

    await until(counted, what=f"origin uploads {expected}")
    await until(lambda: not leftovers(herd), what="no stray uploads")


async def _upload_sources(session: aiohttp.ClientSession, herd: Herd) -> dict[str, float]:
    """``kraken_origin_uploads_total`` by source, summed over the origins."""
    sources = {"push": 0.0, "replica": 0.0}
    for origin in herd.origins:
        async with session.get(f"{origin.url}/metrics") as r:
            text = await r.text()
        for source in sources:
            sources[source] += metric(text, "kraken_origin_uploads_total", 0, source=source)
    return sources
