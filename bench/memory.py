"""Resident memory of every component, idle and under the load it is built for.

A herd (testfs, origin, tracker, build-index, proxy) and one agent, as real processes. Each
process's ``VmRSS`` is read once the herd is up and idle. Then, one load at a time, the
processes it exercises are watched: their peak is the larger of ``VmRSS`` sampled every
50 ms and ``VmHWM`` (reset first through ``/proc/<pid>/clear_refs``, so that it covers the
load only):

* agent: a cold pull of a ``--memory-blob-mb`` (1 GiB) blob through its server (BitTorrent
  from the origin, sha256, cache, serve); its RSS once the pull is over is its idle after.
* origin, proxy, testfs: ``--pushes`` (50) concurrent pushes of distinct ``--push-blob-mb``
  blobs through the proxy (POST, one streamed PATCH, PUT with the digest, as docker does);
  the origin writes each back to testfs.
* tracker: announces of distinct torrents and peers, 50 at a time.
* build-index: tags of one image put and read back, 50 at a time.

Bounds (:data:`BOUNDS`) are the issue's: agent <= 80 MiB idle and <= 150 MiB during the pull,
origin <= 200 MiB during the pushes.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import MiB, finish_curl, fresh_workdir, random_blob_file, start_curl, wait_idle
from kraken.devcluster import Process
from tests.support.cluster import Herd, start_herd, wait_metainfo
from tests.support.process import rss_mib
from tests.support.registry_http import push_blob_bytes, push_blob_file, push_manifest
from tests.support.tracker import announce_query

REPO = "bench/memory"
CONCURRENCY = 50
SAMPLE_SECONDS = 0.05
#: (process, load) -> the issue's bound in MiB.
BOUNDS = {("agent", "idle"): 80.0, ("agent", "idle after the pull"): 80.0, ("agent", "pull"): 150.0,
          ("origin", "pushes"): 200.0}


@dataclass
class Peak:
    """The highest ``VmRSS`` seen by sampling and the ``VmHWM`` read at the end, per pid."""

    sampled: dict[int, float] = field(default_factory=dict)
    hwm: dict[int, float] = field(default_factory=dict)

    def of(self, pid: int) -> float:
        return max(self.sampled.get(pid, 0.0), self.hwm.get(pid, 0.0))


def _reset_hwm(pid: int) -> None:
    """Make ``VmHWM`` start again from the current RSS (``5`` to clear_refs, Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@contextmanager
def watch(pids: list[int]) -> Iterator[Peak]:
    """Sample the RSS of ``pids`` every 50 ms in a thread while the block runs."""
    peak = Peak()
    for pid in pids:
        _reset_hwm(pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in pids:
                rss, _ = rss_mib(pid)
                peak.sampled[pid] = max(peak.sampled.get(pid, 0.0), rss)
            stop.wait(SAMPLE_SECONDS)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        for pid in pids:
            peak.hwm[pid] = rss_mib(pid)[1]


def _pid(proc: Process) -> int:
    assert proc.popen is not None
    return proc.popen.pid


async def _push_one(session: aiohttp.ClientSession, proxy: str, size: int) -> None:
    """One blob of ``size`` random bytes, hashed as it streams (never whole in memory)."""
    sha = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left:
            block = os.urandom(min(MiB, left))
            sha.update(block)
            left -= len(block)
            yield block

    async with session.post(f"{proxy}/v2/{REPO}/blobs/uploads/") as resp:
        assert resp.status == 202, resp.status
        location = resp.headers["Location"]
    url = location if location.startswith("http") else proxy + location
    async with session.patch(url, data=body(), headers={"Content-Type": "application/octet-stream"}) as resp:
        assert resp.status == 202, resp.status
        location = resp.headers["Location"]
    url = location if location.startswith("http") else proxy + location
    sep = "&" if "?" in url else "?"
    async with session.put(f"{url}{sep}digest=sha256:{sha.hexdigest()}") as resp:
        assert resp.status == 201, resp.status


async def _bounded(jobs: int, job: Callable[[aiohttp.ClientSession, int], Awaitable[None]]) -> None:
    """Run ``job(session, i)`` for i in range(jobs), :data:`CONCURRENCY` at a time."""
    gate = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:

        async def one(i: int) -> None:
            async with gate:
                await job(s, i)

        await asyncio.gather(*(one(i) for i in range(jobs)))


def _pushes(herd: Herd, count: int, size: int) -> None:
    asyncio.run(_bounded(count, lambda s, _i: _push_one(s, herd.proxy.url, size)))


def _announces(herd: Herd, count: int) -> None:
    async def one(s: aiohttp.ClientSession, i: int) -> None:
        ih = hashlib.sha1(f"memory-{i // 4}".encode()).digest()
        query = announce_query(ih, 20000 + i % 40000, left=i % 2, event="started",
                               peer_id=hashlib.sha1(f"peer-{i}".encode()).digest())
        async with s.get(f"{herd.tracker.url}/announce?{query}") as resp:
            await resp.read()

    asyncio.run(_bounded(count, one))


def _tags(herd: Herd, count: int, manifest: str) -> None:
    base = herd.build_index.url
    quoted = REPO.replace("/", "%2F")

    async def put(s: aiohttp.ClientSession, i: int) -> None:
        async with s.put(f"{base}/tags/{quoted}:t{i}/digest/{manifest}") as resp:
            assert resp.status == 200, resp.status

    async def get(s: aiohttp.ClientSession, i: int) -> None:
        async with s.get(f"{base}/tags/{quoted}:t{i}") as resp:
            assert resp.status == 200, resp.status

    asyncio.run(_bounded(count, put))
    asyncio.run(_bounded(count, get))


def run(args: argparse.Namespace) -> str:
    workdir = fresh_workdir(args.workdir, "memory")
    size = args.memory_blob_mb * MiB
    blob = workdir / "blob"
    digest = random_blob_file(blob, size)
    herd = start_herd(workdir / "herd", agents=1)
    rows: list[tuple[str, str, float]] = []
    timings: list[str] = []
    try:
        procs = {p.component: p for p in herd.supervisor.processes.values()}
        wait_idle(herd)
        for name, proc in procs.items():
            rows.append((name, "idle", rss_mib(_pid(proc))[0]))
        push_blob_file(herd.proxy.url, REPO, blob, digest)
        config = push_blob_bytes(herd.proxy.url, REPO, b'{"architecture":"amd64","os":"linux"}')
        manifest = push_manifest(herd.proxy.url, REPO, "v1", config, 37, digest, size)
        wait_idle(herd)
        wait_metainfo(herd.origin.url + "/internal", REPO, digest)
        agent = procs["agent"]
        url = f"http://127.0.0.1:{agent.health_port}/namespace/{REPO.replace('/', '%2F')}/blobs/{digest}"
        with watch([_pid(agent)]) as peak:
            took = finish_curl(start_curl(url)).total
        timings.append(f"pull {took:.1f} s")
        rows.append(("agent", "pull", peak.of(_pid(agent))))
        rows.append(("agent", "idle after the pull", rss_mib(_pid(agent))[0]))
        pushed = [procs[n] for n in ("origin", "proxy", "testfs")]
        with watch([_pid(p) for p in pushed]) as peak:
            start = time.monotonic()
            _pushes(herd, args.pushes, args.push_blob_mb * MiB)
            wait_idle(herd)
        timings.append(f"pushes {time.monotonic() - start:.1f} s")
        rows += [(p.component, "pushes", peak.of(_pid(p))) for p in pushed]
        tracker = procs["tracker"]
        with watch([_pid(tracker)]) as peak:
            start = time.monotonic()
            _announces(herd, args.announces)
        timings.append(f"announces {time.monotonic() - start:.1f} s")
        rows.append(("tracker", "announces", peak.of(_pid(tracker))))
        index = procs["build-index"]
        with watch([_pid(index)]) as peak:
            start = time.monotonic()
            _tags(herd, args.tags, str(manifest))
        timings.append(f"tags {time.monotonic() - start:.1f} s")
        rows.append(("build-index", "tags", peak.of(_pid(index))))
    finally:
        herd.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # ~3 GiB: the blob, its copies, the pushes
    return _report(args, rows, timings)


def _load_label(args: argparse.Namespace, load: str) -> str:
    return {
        "pull": f"cold pull of a {args.memory_blob_mb} MiB blob (peak)",
        "pushes": f"{args.pushes} pushes of {args.push_blob_mb} MiB at once (peak)",
        "announces": f"{args.announces} announces, {CONCURRENCY} at once (peak)",
        "tags": f"{args.tags} tag PUTs then GETs, {CONCURRENCY} at once (peak)",
    }.get(load, load)


def _report(args: argparse.Namespace, rows: list[tuple[str, str, float]], timings: list[str]) -> str:
    lines = [
        "### Memory of every component (RSS, MiB)",
        "",
        "| process | state | RSS | bound | within |",
        "|---|---|---|---|---|",
    ]
    for name, load, rss in rows:
        bound = BOUNDS.get((name, load))
        verdict = "" if bound is None else ("yes" if rss <= bound else "NO")
        lines.append(f"| {name} | {_load_label(args, load)} | {rss:.0f} | {'' if bound is None else f'{bound:.0f}'} "
                     f"| {verdict} |")
    lines += ["", f"load average {Path('/proc/loadavg').read_text().split()[0]}; " + ", ".join(timings)]
    return "\n".join(lines)
