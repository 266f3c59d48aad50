"""Origin ring health and failover on a herd of real processes: three origins on one ring, each
blob owned by two, and the ring's clients (proxy, build-index, tracker, an agent) each checking
the origins (kraken/http/healthcheck.py, default settings: ``/health`` every second, three
failures in a row).

An origin killed with SIGKILL leaves every client's view within seconds
(``kraken_ring_host_healthy``); reads and writes of its blobs go to the other owner meanwhile,
also a tag whose references build-index checks and a pull through the agent; once started
again it rejoins every view and gets the blob written while it was away (replication retried).
A push whose streamed upload goes to an origin that dies mid-upload is resent whole, from the
proxy's staged copy, to the next owner.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from kraken.core.digest import Digest
from kraken.devcluster import Process
from kraken.registry.manifest import DOCKER_MANIFEST
from kraken.ring import HashRing
from kraken.store.cas import WRITE_BATCH
from tests.support.cluster import Herd, start_herd
from tests.support.metrics import metric
from tests.support.proxy import manifest_for
from tests.support.waiting import until

REPO = "ring/app"
#: How long a killed origin may take to leave a client's view, and a restarted one to rejoin:
#: about 3 s and 2 s with the defaults, with room for a loaded machine.
VIEW_DEADLINE = 10.0


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    """Replication retried quickly, so a restarted owner gets its copy within the test; the
    agent falls back to HTTP after 3 s without P2P progress."""
    overrides = {"origin": {"replication": {"retry_interval": "200ms", "max_retry_interval": "1s"}},
                 "agent": {"download": {"fallback_after": "3s"}}}
    h = start_herd(Path(tmp_path_factory.mktemp("herd")), origins=3, max_replica=2, agents=1,
                   overrides=overrides)
    try:
        yield h
    finally:
        h.stop()


def clients(herd: Herd) -> list[Process]:
    """Every process with an OriginCluster."""
    return [herd.proxy, herd.build_index, herd.tracker, *herd.agents]


def origin_named(herd: Herd, addr: str) -> Process:
    return next(o for o in herd.origins if o.addr == addr)


def ring(herd: Herd) -> HashRing:
    return HashRing([o.addr for o in herd.origins], 2)


def blob_owned_by(herd: Herd, host: str, first: bool = False) -> tuple[bytes, Digest]:
    """A random blob that ``host`` owns (as its first owner with ``first``)."""
    while True:
        data = os.urandom(300_000)
        digest = Digest.of_bytes(data)
        owners = ring(herd).owners(digest)
        if (owners[0] == host) if first else (host in owners):
            return data, digest


async def metrics_of(session: aiohttp.ClientSession, proc: Process) -> str:
    async with session.get(f"{proc.url}/metrics") as r:
        return await r.text()


async def views(session: aiohttp.ClientSession, herd: Herd, host: str) -> list[float]:
    """``kraken_ring_host_healthy{host}`` in every client."""
    texts = await asyncio.gather(*(metrics_of(session, p) for p in clients(herd)))
    return [metric(t, "kraken_ring_host_healthy", host=host) for t in texts]


async def wait_views(session: aiohttp.ClientSession, herd: Herd, host: str, healthy: bool) -> float:
    """Seconds until every client shows ``host`` as ``healthy``."""
    started = time.monotonic()
    want = 1.0 if healthy else 0.0

    async def settled() -> bool:
        return all(v == want for v in await views(session, herd, host))

    await until(settled, VIEW_DEADLINE + 20, f"{host} {'back in' if healthy else 'out of'} every client's view",
                interval=0.1)
    return time.monotonic() - started


async def push(session: aiohttp.ClientSession, herd: Herd, data: bytes) -> Digest:
    digest = Digest.of_bytes(data)
    base = URL(herd.proxy.url)
    async with session.post(base / "v2" / REPO / "blobs/uploads/", data=b"") as r:
        assert r.status == 202, await r.text()
        location = base.join(URL(r.headers["Location"]))
    async with session.put(location.update_query(digest=str(digest)), data=data) as r:
        assert r.status == 201, await r.text()
    return digest


async def pull(session: aiohttp.ClientSession, url: str, digest: Digest) -> bytes:
    async with session.get(f"{url}/v2/{REPO}/blobs/{digest}") as r:
        assert r.status == 200, await r.text()
        return await r.read()


async def cached_on(session: aiohttp.ClientSession, herd: Herd, digest: Digest) -> set[str]:
    """The live origins whose cache holds the blob (their local-only HEAD, which never fetches)."""
    async def has(o: Process) -> bool:
        if not o.alive():
            return False
        async with session.head(f"{o.url}/internal/namespace/{quote(REPO, safe='')}/blobs/{digest}") as r:
            return r.status == 200

    origins = herd.origins
    found = await asyncio.gather(*(has(o) for o in origins))
    return {o.addr for o, hit in zip(origins, found, strict=True) if hit}


async def restart(session: aiohttp.ClientSession, herd: Herd, origin: Process) -> float:
    """Start a killed origin again; seconds until every client's view has it back."""
    await asyncio.to_thread(herd.supervisor.start, origin)
    return await wait_views(session, herd, origin.addr, healthy=True)


async def test_a_killed_origin_leaves_every_view_its_blobs_stay_readable_and_writable_and_it_rejoins(
    herd: Herd, session: aiohttp.ClientSession
) -> None:
    victim = herd.origins[1]
    old, old_digest = blob_owned_by(herd, victim.addr, first=True)
    assert await push(session, herd, old) == old_digest
    await until(lambda: _has_both(session, herd, old_digest), what="both owners hold the blob")

    await asyncio.to_thread(herd.supervisor.kill, victim.name)
    # At once, before any check noticed: the proxy's read moves to the other owner.
    assert await pull(session, herd.proxy.url, old_digest) == old
    assert metric(await metrics_of(session, herd.proxy), "kraken_ring_failovers_total") >= 1

    left = await wait_views(session, herd, victim.addr, healthy=False)
    assert left <= VIEW_DEADLINE, f"{victim.addr} left the views after {left:.1f}s"
    for other in herd.origins:
        if other is not victim:
            assert await views(session, herd, other.addr) == [1.0] * len(clients(herd))
    try:
        # Writes of the dead origin's blobs go to their other owner; so do the reads.
        new, new_digest = blob_owned_by(herd, victim.addr)
        assert await push(session, herd, new) == new_digest
        [survivor] = [h for h in ring(herd).owners(new_digest) if h != victim.addr]
        assert survivor in await cached_on(session, herd, new_digest)
        assert await pull(session, herd.proxy.url, new_digest) == new
        # build-index checks a tag's references on the ring; the agent pulls through the tracker.
        config_blob = b'{"architecture":"amd64","os":"linux"}'
        config = await push(session, herd, config_blob)
        layers = [(old_digest, len(old)), (new_digest, len(new))]
        # Each reference on every live owner first: build-index may ask the owner a streamed
        # blob was not committed on before its replica arrived (that one then answers 404).
        for digest in (config, new_digest):
            await until(lambda d=digest: _on_live_owners(session, herd, d), what="replicas on the live owners")
        manifest = manifest_for((config, len(config_blob)), layers, DOCKER_MANIFEST)
        async with session.put(f"{herd.proxy.url}/v2/{REPO}/manifests/v1", data=manifest,
                               headers={"Content-Type": DOCKER_MANIFEST}) as r:
            assert r.status == 201, await r.text()
        assert await pull(session, herd.agents[0].url, new_digest) == new
        assert await pull(session, herd.agents[0].url, old_digest) == old
    finally:
        back = await restart(session, herd, victim)
    assert back <= VIEW_DEADLINE, f"{victim.addr} rejoined the views after {back:.1f}s"
    # The blob written while it was away reaches it (its owner's replication was retried).
    await until(lambda: _holds(session, herd, new_digest, victim.addr), 30, "replica on the restarted origin")
    assert await pull(session, herd.proxy.url, new_digest) == new


async def _has_both(session: aiohttp.ClientSession, herd: Herd, digest: Digest) -> bool:
    return set(ring(herd).owners(digest)) <= await cached_on(session, herd, digest)


async def _on_live_owners(session: aiohttp.ClientSession, herd: Herd, digest: Digest) -> bool:
    live = {o.addr for o in herd.origins if o.alive()}
    return set(ring(herd).owners(digest)) & live <= await cached_on(session, herd, digest)


async def _holds(session: aiohttp.ClientSession, herd: Herd, digest: Digest, host: str) -> bool:
    return host in await cached_on(session, herd, digest)


def upload_files(herd: Herd, origin: Process) -> dict[str, int]:
    """The origin's uploads in flight: file name -> bytes received."""
    return {p.name: p.stat().st_size for p in (herd.workdir / origin.name / "uploads").iterdir()}


async def test_a_push_whose_origin_dies_mid_upload_is_resent_to_the_next_owner(
    herd: Herd, session: aiohttp.ClientSession
) -> None:
    """The client sends half the blob; the origin the proxy streams it to is killed; the client
    sends the rest (chosen so that the killed origin is the blob's first owner) and commits."""
    before = {o.name: set(upload_files(herd, o)) for o in herd.origins}
    first = os.urandom(WRITE_BATCH + (2 << 20))
    base = URL(herd.proxy.url)
    async with session.post(base / "v2" / REPO / "blobs/uploads/", data=b"") as r:
        assert r.status == 202, await r.text()
        location = base.join(URL(r.headers["Location"]))
    headers = {"Content-Range": f"0-{len(first) - 1}", "Content-Type": "application/octet-stream"}
    async with session.patch(location, data=first, headers=headers) as r:
        assert r.status == 202, await r.text()
        location = base.join(URL(r.headers["Location"]))

    def streamed_to() -> Process | None:
        """The origin that has written bytes of a new upload (it writes them in batches)."""
        for o in herd.origins:
            sizes = upload_files(herd, o)
            if any(size >= WRITE_BATCH for name, size in sizes.items() if name not in before[o.name]):
                return o
        return None

    target = await until(streamed_to, 20, "the proxy's stream to an origin")
    while True:
        rest = os.urandom(1 << 20)
        digest = Digest.of_bytes(first + rest)
        if ring(herd).owners(digest)[0] == target.addr:
            break
    [survivor] = [h for h in ring(herd).owners(digest) if h != target.addr]
    sent_before = metric(await metrics_of(session, herd.proxy), "kraken_proxy_blobs_uploaded_total",
                         path="sent_at_commit")

    await asyncio.to_thread(herd.supervisor.kill, target.name)
    try:
        headers = {"Content-Range": f"{len(first)}-{len(first) + len(rest) - 1}",
                   "Content-Type": "application/octet-stream"}
        async with session.patch(location, data=rest, headers=headers) as r:
            assert r.status == 202, await r.text()
            location = base.join(URL(r.headers["Location"]))
        async with session.put(location.update_query(digest=str(digest))) as r:
            assert r.status == 201, await r.text()
        assert survivor in await cached_on(session, herd, digest)
        assert await pull(session, herd.proxy.url, digest) == first + rest
        text = await metrics_of(session, herd.proxy)
        assert metric(text, "kraken_proxy_blobs_uploaded_total", path="sent_at_commit") == sent_before + 1
    finally:
        await restart(session, herd, target)
