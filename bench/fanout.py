"""Fan-out: N agents (separate processes) pull one blob at once with every upload capped.

The origin and every agent upload at most R bytes/s; downloads are not limited. The fluid
lower bound on the time for all N to hold the blob of S bytes is

    T_min = max(S / R_origin, N * S / (R_origin + N * R))

(the origin must send every byte at least once; all N copies must be uploaded by someone).
Each agent's time runs from the moment the N requests are sent together to the moment its
agent server answers with the first byte of the blob, i.e. the blob is downloaded, its sha256
verified and in the cache; the time to the last byte (curl discarding it) is printed too.

The baseline is the same N pulls from Debian's distribution registry whose egress is capped
at R (HTB in a network namespace: :mod:`bench.capped_registry`), the central-registry setup
the P2P design replaces.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.capped_registry import CappedRegistry
from bench.common import (
    CurlTiming,
    MiB,
    finish_curl,
    metric,
    percentile,
    push_blob_file,
    random_blob_file,
    scrape,
    start_curl,
    wait_idle,
    wait_metainfo,
)
from kraken.core.digest import Digest
from tests.cluster import Herd, start_herd

REPO = "bench/fanout"


@dataclass
class FanoutRun:
    timings: list[CurlTiming]
    origin_uploaded: float
    from_origin: list[float]
    from_peers: list[float]
    peers_uploaded: list[float]


def _origin_upload(herd: Herd) -> float:
    return metric(scrape(herd.origin.url), "kraken_p2p_upload_bytes_total")


def _settled_origin_upload(herd: Herd, interval: float) -> float:
    """The origin's upload counter once two reads ``interval`` apart agree (it is refreshed
    every ``p2p.stats_interval``)."""
    last = _origin_upload(herd)
    while True:
        time.sleep(interval)
        now = _origin_upload(herd)
        if now == last:
            return now
        last = now


class Timeline(threading.Thread):
    """Every second: MiB/s uploaded by the origin and by all agents together (shows where the
    swarm leaves upload capacity unused)."""

    def __init__(self, herd: Herd) -> None:
        super().__init__(daemon=True)
        self.herd = herd
        self.rows: list[tuple[float, float, float]] = []
        self._done = threading.Event()

    def sample(self) -> tuple[float, float]:
        agents = sum(metric(scrape(f"http://127.0.0.1:{a.health_port}"), "kraken_p2p_upload_bytes_total")
                     for a in self.herd.agents)
        return _origin_upload(self.herd), agents

    def run(self) -> None:
        start = time.monotonic()
        last = self.sample()
        while not self._done.wait(1.0):
            now = self.sample()
            self.rows.append((time.monotonic() - start, (now[0] - last[0]) / MiB, (now[1] - last[1]) / MiB))
            last = now

    def stop(self) -> None:
        self._done.set()
        self.join()


def pull_everywhere(herd: Herd, digest: Digest, stats_interval: float) -> FanoutRun:
    before = _origin_upload(herd)
    url = lambda agent: f"http://127.0.0.1:{agent.health_port}/namespace/{REPO.replace('/', '%2F')}/blobs/{digest}"
    procs = [start_curl(url(agent)) for agent in herd.agents]
    timeline = Timeline(herd)
    timeline.start()
    timings = [finish_curl(p) for p in procs]
    timeline.stop()
    origin_uploaded = _settled_origin_upload(herd, 2 * stats_interval) - before
    texts = [scrape(f"http://127.0.0.1:{a.health_port}") for a in herd.agents]
    print("timeline (s: origin MiB/s, agents MiB/s): " + " ".join(f"{t:.0f}:{o:.0f}/{a:.0f}" for t, o, a in timeline.rows))
    return FanoutRun(
        timings,
        origin_uploaded,
        [metric(t, "kraken_p2p_download_bytes_total", source="origin") for t in texts],
        [metric(t, "kraken_p2p_download_bytes_total", source="peer") for t in texts],
        [metric(t, "kraken_p2p_upload_bytes_total") for t in texts],
    )


def run(args: argparse.Namespace) -> str:
    workdir: Path = args.workdir / "fanout"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    n, size, rate = args.agents, args.fanout_size_mb * MiB, args.rate_mb * MiB
    blob = workdir / "blob"
    digest = random_blob_file(blob, size)
    stats_interval = 0.5
    p2p = {"upload_rate_limit": rate, "stats_interval": f"{int(stats_interval * 1000)}ms"}
    origin: dict = {"p2p": p2p}
    if args.piece_mb:
        origin["metainfo"] = {"piece_lengths": {0: args.piece_mb * MiB}}
    herd = start_herd(workdir / "herd", agents=n, overrides={"origin": origin, "agent": {"p2p": p2p}})
    try:
        push_blob_file(herd.proxy.url, REPO, blob, digest)
        wait_idle(herd)
        wait_metainfo(herd.origin.url + "/internal", REPO, digest)
        kraken = pull_everywhere(herd, digest, stats_interval)
    finally:
        herd.stop()
    baseline: list[CurlTiming] = []
    if args.baseline:
        registry = CappedRegistry(workdir / "registry", rate)
        try:
            registry.add_blob(REPO, blob, digest)
            registry.start()
            procs = [start_curl(f"{registry.url}/v2/{REPO}/blobs/{digest}", netns=registry.netns) for _ in range(n)]
            baseline = [finish_curl(p) for p in procs]
        finally:
            registry.stop()
    blob.unlink()
    return _report(args, n, size, rate, kraken, baseline)


def _report(args: argparse.Namespace, n: int, size: int, rate: int, run: FanoutRun, baseline: list[CurlTiming]) -> str:
    t_min = max(size / rate, n * size / (rate + n * rate))
    ready = [t.first_byte for t in run.timings]
    done = [t.total for t in run.timings]
    assert all(t.size == size for t in run.timings), [t.size for t in run.timings]
    lines = [
        f"### Fan-out: {n} agents pull one {size / MiB:.0f} MiB blob at once, uploads capped at {rate / MiB:.0f} MiB/s",
        "",
        f"T_min = max(S/R, N*S/(R + N*R)) = {t_min:.1f} s",
        "",
        "| measure | value | / T_min |",
        "|---|---|---|",
        f"| p50 blob ready (verified, in the cache) | {percentile(ready, 50):.1f} s | {percentile(ready, 50) / t_min:.2f} |",
        f"| p99 blob ready | {percentile(ready, 99):.1f} s | {percentile(ready, 99) / t_min:.2f} |",
        f"| p50 last byte read by curl | {percentile(done, 50):.1f} s | {percentile(done, 50) / t_min:.2f} |",
        f"| p99 last byte read by curl | {percentile(done, 99):.1f} s | {percentile(done, 99) / t_min:.2f} |",
        f"| origin egress | {run.origin_uploaded / size:.2f} copies of S | |",
        f"| agents' download from origin / peers | {sum(run.from_origin) / size:.2f} / {sum(run.from_peers) / size:.2f} copies | |",
        f"| agents' upload | {sum(run.peers_uploaded) / size:.2f} copies | |",
    ]
    if baseline:
        base = [t.total for t in baseline]
        lines.append(
            f"| distribution, egress capped at R: p50 / p99 | {percentile(base, 50):.1f} / {percentile(base, 99):.1f} s "
            f"| speedup {percentile(base, 50) / percentile(done, 50):.1f}x / "
            f"{percentile(base, 99) / percentile(done, 99):.1f}x |"
        )
    lines += ["", f"mean ready {statistics.mean(ready):.1f} s; per agent: ready s, MiB from origin / peers, MiB uploaded:"]
    lines += [f"  {t.first_byte:.1f} s, {o / MiB:.0f} / {p / MiB:.0f}, {u / MiB:.0f}"
              for t, o, p, u in zip(run.timings, run.from_origin, run.from_peers, run.peers_uploaded)]
    return "\n".join(lines)
