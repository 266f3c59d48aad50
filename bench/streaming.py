"""A cold blob streamed by the agent while it downloads, against a bare libtorrent transfer.

One herd (origin seeding, tracker) and one agent, no rate limits, as in :mod:`bench.agentpull`.
Each repetition measures, one after the other on the same origin:

- **bare**: a P2P session in this process (kraken's settings pack, the agent's role and
  defaults) downloads the blob from the origin, metainfo and peers from the same tracker;
  the time from adding the torrent to the file complete on disk. Two libtorrent sessions on
  loopback and nothing else: the floor for any agent transfer;
- **agent, cold**: ``curl`` of the blob from the agent server, not in its cache (deleted
  before each repetition): time to the first byte of the body and to the last. Streaming
  sends the first piece as soon as libtorrent verified it and the last once the whole
  blob's sha256 matched and the blob is in the cache;
- **agent, cold, whole file first**: the same with ``Range: bytes=0-``, which the agent
  serves from the verified file only: the path every cold GET took before streaming
  (download, then a sha256 pass over the file, then the file).

Goal (issue 14): first byte <= 1 s, total <= 1.1 x bare. Ratios are per repetition
(agent / bare of the same repetition), then the median.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from bench.common import MiB, finish_curl, fresh_workdir, random_blob_file, wait_idle
from kraken.config import ListenConfig
from kraken.core.digest import Digest
from kraken.metrics import Metrics
from kraken.p2p import P2PConfig, P2PSession
from tests.support.cluster import start_herd, wait_metainfo
from tests.support.registry_http import push_blob_file

REPO = "bench/streaming"


def _delete(url: str) -> None:
    req = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204, resp.status


def _metainfo(tracker_url: str, digest: Digest) -> bytes:
    url = f"{tracker_url}/namespace/{REPO.replace('/', '%2F')}/blobs/{digest}/metainfo"
    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.read()


async def _bare(metainfo: bytes, tracker_url: str, into: Path) -> float:
    """Seconds for a fresh agent-role session to download the torrent from the origin."""
    session = await P2PSession.start(P2PConfig(listen=ListenConfig(host="127.0.0.1", port=0)),
                                     Metrics("bench-bare"), role="agent")
    try:
        into.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = await session.download(metainfo, into, f"{tracker_url}/announce", timeout=600)
        seconds = time.perf_counter() - start
        await session.remove(result.info_hash, delete_files=True)
        return seconds
    finally:
        await session.close()


def start_curl(url: str, *, ranged: bool) -> subprocess.Popen:
    """:func:`bench.common.start_curl`, with ``Range: bytes=0-`` if ``ranged``."""
    argv = ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} %{size_download}"]
    return subprocess.Popen([*argv, *(["-r", "0-"] if ranged else []), url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(args: argparse.Namespace) -> str:
    workdir = fresh_workdir(args.workdir, "streaming")
    size = args.stream_size_mb * MiB
    blob = workdir / "blob"
    digest = random_blob_file(blob, size)
    times: dict[str, list[float]] = {"bare": [], "ttfb": [], "total": [], "file_ttfb": [], "file_total": []}
    herd = start_herd(workdir / "herd", agents=1)
    try:
        server = f"http://127.0.0.1:{herd.agents[0].health_port}"
        push_blob_file(herd.proxy.url, REPO, blob, digest)
        wait_idle(herd)
        wait_metainfo(herd.origin.url + "/internal", REPO, digest)
        metainfo = _metainfo(herd.tracker.url, digest)
        blob_url = f"{server}/namespace/{REPO.replace('/', '%2F')}/blobs/{digest}"
        for rep in range(args.reps):
            times["bare"].append(asyncio.run(_bare(metainfo, herd.tracker.url, workdir / f"bare-{rep}")))
            for key, ranged in (("", False), ("file_", True)):
                timing = finish_curl(start_curl(blob_url, ranged=ranged))
                assert timing.size == size, timing
                times[f"{key}ttfb"].append(timing.first_byte)
                times[f"{key}total"].append(timing.total)
                _delete(f"{server}/blobs/{digest}")
    finally:
        herd.stop()
    blob.unlink()
    return _report(args, size, times)


def _report(args: argparse.Namespace, size: int, times: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    def ratio(key: str) -> float:
        return statistics.median(t / b for t, b in zip(times[key], times["bare"], strict=True))


    def rate(seconds: float) -> str:
        return f"{seconds:.2f} s ({size / MiB / seconds:.0f} MiB/s)"

    return "\n".join([
        f"### Streaming a cold {size / MiB:.0f} MiB blob from one agent, no limits ({args.reps} reps, medians)",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| bare libtorrent transfer (origin -> a session in the bench) | {rate(med['bare'])} | |",
        f"| agent, cold: time to first byte | {med['ttfb']:.3f} s | <= 1 s |",
        f"| agent, cold: total | {rate(med['total'])} | |",
        f"| total / bare (per repetition, median) | {ratio('total'):.2f} | <= 1.10 |",
        f"| agent, cold, whole file first (`Range: bytes=0-`): first byte | {med['file_ttfb']:.3f} s | |",
        f"| agent, cold, whole file first: total | {rate(med['file_total'])} | |",
        f"| whole file first: total / bare | {ratio('file_total'):.2f} | |",
        "",
        "raw seconds: " + ", ".join(f"{k}={[round(t, 3) for t in v]}" for k, v in times.items()),
    ])
