"""Clients that ask for a big manifest or blob and then read nothing cost the servers little
memory: responses are sent from files with ``sendfile`` (kraken/http/files.py), never a
whole copy per connection.

A herd with one agent runs as real processes; 100 connections each GET a 4 MB manifest from
the proxy and from the agent, and a 32 MiB blob from the agent and through the proxy, read the response head and
then nothing. Each process's resident memory (``VmRSS``) must grow by less than
:data:`GROWTH_MIB` (a whole copy per connection would be 400 MiB for the manifests; measured
160-450 MiB before the fix). The blob goes first: memory a process freed stays resident
and is reused, so a test that ran before on the same process would hide another's growth
(before the fix, at least).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kraken.core.digest import Digest
from kraken.devcluster import Process
from kraken.registry.manifest import OCI_MANIFEST
from tests.support.cluster import Herd, start_herd, wait_metainfo
from tests.support.metrics import metric_sum, scrape
from tests.support.process import rss_mib
from tests.support.rawsockets import read_until_closed, slow_readers
from tests.support.registry_http import push_blob_bytes, push_padded_image
from tests.support.waiting import until

READERS = 100
WARM_UP = 10
MANIFEST_SIZE = (4 << 20) - 1024
BLOB_SIZE = 32 << 20
GROWTH_MIB = 80
WRITE_TIMEOUT = 5.0
REPO = "slow/readers"


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    # The agent's write timeout is short enough for a test to see a stalled sendfile dropped,
    # and long enough for the memory tests' readers to stay until they are measured.
    h = start_herd(Path(tmp_path_factory.mktemp("herd")), agents=1,
                   overrides={"agent": {"http": {"write_timeout": f"{WRITE_TIMEOUT}s"}}})
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def image(herd: Herd) -> tuple[Digest, Digest]:
    """The padded manifest's and a blob's digests, each read once through the agent (and the
    manifest through the proxy) so both serve them from their disk."""
    manifest = push_padded_image(herd.proxy.url, REPO, "v1", MANIFEST_SIZE)
    blob = push_blob_bytes(herd.proxy.url, REPO, os.urandom(BLOB_SIZE))
    wait_metainfo(herd.origin.url + "/internal", REPO, blob)
    agent = herd.agents[0]
    for url in (f"{herd.proxy.url}/v2/{REPO}/manifests/v1", f"{agent.url}/v2/{REPO}/manifests/v1",
                f"{agent.url}/v2/{REPO}/blobs/{blob}"):
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": OCI_MANIFEST}), timeout=120) as r:
            body = r.read()
        assert Digest.of_bytes(body) in (manifest, blob)
    return manifest, blob


def _growth_mib(proc: Process, path: str, readers: int = READERS) -> float:
    """RSS growth while ``readers`` slow readers are stalled, after a few first ones paid the
    one-time costs (the worker threads that read files, and their malloc arenas)."""
    assert proc.popen is not None
    for sock in slow_readers(proc.host, proc.port, path, WARM_UP):
        sock.close()
    before, _ = rss_mib(proc.popen.pid)
    socks = slow_readers(proc.host, proc.port, path, readers)
    try:
        during, _ = rss_mib(proc.popen.pid)
    finally:
        for sock in socks:
            sock.close()
    return during - before


def test_slow_readers_of_a_blob_cost_the_agent_little_memory(herd: Herd, image: tuple[Digest, Digest]) -> None:
    _, blob = image
    growth = _growth_mib(herd.agents[0], f"/v2/{REPO}/blobs/{blob}")
    assert growth < GROWTH_MIB, f"{READERS} slow readers of a {BLOB_SIZE >> 20} MiB blob took {growth:.0f} MiB"


@pytest.mark.parametrize("server", ["proxy", "agent-1"])
def test_slow_readers_of_a_4mb_manifest_cost_little_memory(herd: Herd, image: tuple[Digest, Digest],
                                                           server: str) -> None:
    growth = _growth_mib(herd[server], f"/v2/{REPO}/manifests/v1")
    assert growth < GROWTH_MIB, f"{server}: {READERS} slow readers of a 4 MB manifest took {growth:.0f} MiB"


def test_slow_readers_of_a_blob_relayed_by_the_proxy_cost_little_memory(
        herd: Herd, image: tuple[Digest, Digest]) -> None:
    """The proxy relays blobs from the origin in 64 KiB chunks, with one upstream connection
    per reader: more readers than aiohttp's default pool of 100 connections all get their
    response (before, the 101st waited for a stalled one to be dropped), at about 0.3 MiB
    each (1 MiB chunks: 0.5)."""
    _, blob = image
    readers = 150
    growth = _growth_mib(herd.proxy, f"/v2/{REPO}/blobs/{blob}", readers)
    assert growth < GROWTH_MIB, f"proxy: {readers} slow readers of a {BLOB_SIZE >> 20} MiB blob took {growth:.0f} MiB"


def test_the_manifest_is_intact_after_the_slow_readers(herd: Herd, image: tuple[Digest, Digest]) -> None:
    manifest, _ = image
    for base in (herd.proxy.url, herd.agents[0].url):
        req = urllib.request.Request(f"{base}/v2/{REPO}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.headers["Docker-Content-Digest"] == str(manifest)
            assert Digest.of_bytes(r.read()) == manifest


async def test_a_blob_reader_that_stops_reading_is_dropped_after_the_write_timeout(
        herd: Herd, image: tuple[Digest, Digest]) -> None:
    """The agent sends cached blobs with sendfile, past aiohttp's buffer: the stall is seen in
    the kernel's counters."""
    _, blob = image
    agent = herd.agents[0]
    before = await _write_timeouts(agent)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(60)
        sock.connect((agent.host, agent.port))
        sock.sendall(f"GET /v2/{REPO}/blobs/{blob} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await until(lambda: _more_write_timeouts(agent, before), timeout=6 * WRITE_TIMEOUT, what="the write timeout")
        received = await asyncio.to_thread(read_until_closed, sock)
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received) < BLOB_SIZE


async def _write_timeouts(proc: Process) -> float:
    text = await asyncio.to_thread(scrape, proc.url)
    return metric_sum(text, "kraken_http_connections_dropped_total", port=str(proc.port), reason="write_timeout")


async def _more_write_timeouts(proc: Process, before: float) -> bool:
    return await _write_timeouts(proc) > before


def test_a_corrupt_cached_manifest_is_never_served(herd: Herd, image: tuple[Digest, Digest]) -> None:
    """Its media type is remembered from the first read, but every read goes through the
    cache's verified read: changed bytes are refused (or fetched again), never sent."""
    manifest, _ = image
    for server in (herd.agents[0], herd.proxy):
        cached = [p for p in herd.workdir.rglob(manifest.hex)
                  if p.is_file() and server.name in p.relative_to(herd.workdir).parts[0]]
        assert cached, f"{server.name} has not cached the manifest"
        for path in cached:
            data = bytearray(path.read_bytes())
            data[-2:-1] = b"y"
            path.write_bytes(bytes(data))
        req = urllib.request.Request(f"{server.url}/v2/{REPO}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                assert Digest.of_bytes(r.read()) == manifest
        except urllib.error.HTTPError as e:
            assert e.code in (404, 503)
            assert json.load(e)["errors"][0]["code"] in ("MANIFEST_UNKNOWN", "UNAVAILABLE")
