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
import os
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.capped_registry import CappedRegistry
from bench.common import (
    CurlTiming,
    MiB,
    finish_curl,
    fresh_workdir,
    percentile,
    random_blob_file,
    start_curl,
    wait_idle,
)
from kraken.core.digest import Digest
from tests.support.cluster import Herd, start_herd, wait_metainfo
from tests.support.metrics import metric_sum, scrape
from tests.support.pki import make_pki
from tests.support.registry_http import push_blob_file

REPO = "bench/fanout"


@dataclass
class FanoutRun:
    timings: list[CurlTiming]
    origin_uploaded: float
    from_origin: list[float]
    from_peers: list[float]
    peers_uploaded: list[float]
    cpu_seconds: float = 0.0


def _cpu_seconds(herd: Herd) -> float:
    """User + system CPU the origin and the agents have used so far (``/proc/<pid>/stat``)."""
    total = 0
    for proc in [herd.origin, *herd.agents]:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def _origin_upload(herd: Herd) -> float:
    return metric_sum(scrape(herd.origin.url), "kraken_p2p_upload_bytes_total")


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
        agents = sum(metric_sum(scrape(f"http://127.0.0.1:{a.health_port}"), "kraken_p2p_upload_bytes_total")
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


def _agent_counters(herd: Herd) -> list[tuple[float, float, float]]:
    """Per agent: bytes downloaded from origins, from peers, and uploaded (all time)."""
    rows = []
    for agent in herd.agents:
        text = scrape(f"http://127.0.0.1:{agent.health_port}")
        rows.append((metric_sum(text, "kraken_p2p_download_bytes_total", source="origin"),
                     metric_sum(text, "kraken_p2p_download_bytes_total", source="peer"),
                     metric_sum(text, "kraken_p2p_upload_bytes_total")))
    return rows


def pull_everywhere(herd: Herd, digest: Digest, stats_interval: float) -> FanoutRun:
    """Every agent pulls the blob at once; afterwards each drops it again (cold for the next run)."""
    origin_before, agents_before = _origin_upload(herd), _agent_counters(herd)
    cpu_before = _cpu_seconds(herd)
    ns = REPO.replace("/", "%2F")
    procs = [start_curl(f"http://127.0.0.1:{a.health_port}/namespace/{ns}/blobs/{digest}") for a in herd.agents]
    timeline = Timeline(herd)
    timeline.start()
    timings = [finish_curl(p) for p in procs]
    cpu = _cpu_seconds(herd) - cpu_before
    timeline.stop()
    origin_uploaded = _settled_origin_upload(herd, 2 * stats_interval) - origin_before
    deltas = [tuple(a - b for a, b in zip(after, before, strict=True))
              for after, before in zip(_agent_counters(herd), agents_before, strict=True)]
    for agent in herd.agents:
        req = urllib.request.Request(f"http://127.0.0.1:{agent.health_port}/blobs/{digest}", method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()
    print(
        "timeline (s: origin MiB/s, agents MiB/s): "
        + " ".join(f"{t:.0f}:{o:.0f}/{a:.0f}" for t, o, a in timeline.rows),
        flush=True,
    )
    return FanoutRun(timings, origin_uploaded, [d[0] for d in deltas], [d[1] for d in deltas], [d[2] for d in deltas],
                     cpu)


def run(args: argparse.Namespace) -> str:
    workdir = fresh_workdir(args.workdir, "fanout")
    n, size, rate = args.agents, args.fanout_size_mb * MiB, args.rate_mb * MiB
    blob = workdir / "blob"
    digest = random_blob_file(blob, size)
    stats_interval = 0.5
    p2p = {"upload_rate_limit": rate, "stats_interval": f"{int(stats_interval * 1000)}ms"}
    if args.p2p_tls:
        # Pieces over libtorrent's SSL torrents (p2p.tls), the test PKI's peer pair.
        p2p["tls"] = make_pki(workdir / "pki").p2p_section()
    origin: dict = {"p2p": p2p}
    if args.piece_mb:
        origin["metainfo"] = {"piece_lengths": {0: args.piece_mb * MiB}}
    herd = start_herd(workdir / "herd", agents=n, overrides={"origin": origin, "agent": {"p2p": p2p}})
    try:
        push_blob_file(herd.proxy.url, REPO, blob, digest)
        wait_idle(herd)
        wait_metainfo(herd.origin.url + "/internal", REPO, digest)
        runs = [pull_everywhere(herd, digest, stats_interval) for _ in range(args.fanout_reps)]
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
    return _report(n, size, rate, runs, baseline, args.p2p_tls)


def _report(n: int, size: int, rate: int, runs: list[FanoutRun], baseline: list[CurlTiming], tls: bool = False) -> str:
    t_min = max(size / rate, n * size / (rate + n * rate))
    for run in runs:
        assert all(t.size == size for t in run.timings), [t.size for t in run.timings]
    ready = [[t.first_byte for t in run.timings] for run in runs]
    done = [[t.total for t in run.timings] for run in runs]

    def across(values: list[float], fmt: str) -> str:
        """The median over the runs, then every run's value."""
        return f"{fmt.format(statistics.median(values))} ({', '.join(fmt.format(v) for v in values)})"

    from_origin = statistics.median(sum(r.from_origin) / size for r in runs)
    from_peers = statistics.median(sum(r.from_peers) / size for r in runs)
    p50_ready, p99_ready = [percentile(r, 50) for r in ready], [percentile(r, 99) for r in ready]
    p50_done, p99_done = [percentile(d, 50) for d in done], [percentile(d, 99) for d in done]
    lines = [
        f"### Fan-out: {n} agents pull one {size / MiB:.0f} MiB blob at once, uploads capped at {rate / MiB:.0f} MiB/s"
        + (", pieces over TLS (p2p.tls)" if tls else ""),
        "",
        f"T_min = max(S/R, N*S/(R + N*R)) = {t_min:.1f} s; {len(runs)} runs: median (each run)",
        "",
        "| measure | value | / T_min |",
        "|---|---|---|",
        *(f"| {label} | {across(values, '{:.1f}')} s | {across([v / t_min for v in values], '{:.2f}')} |"
          for label, values in (("p50 blob ready (verified, in the cache)", p50_ready), ("p99 blob ready", p99_ready),
                                ("p50 last byte read by curl", p50_done), ("p99 last byte read by curl", p99_done))),
        f"| origin egress, copies of S | {across([r.origin_uploaded / size for r in runs], '{:.2f}')} | |",
        f"| agents' download from origin / peers, copies | {from_origin:.2f} / {from_peers:.2f} | |",
        f"| CPU of the origin and agents during the pulls | {across([r.cpu_seconds for r in runs], '{:.1f}')} s | |",
    ]
    if baseline:
        base = [t.total for t in baseline]
        lines.append(
            "| distribution, egress capped at R: p50 / p99 | "
            f"{percentile(base, 50):.1f} / {percentile(base, 99):.1f} s "
            f"| speedup {percentile(base, 50) / statistics.median(p50_done):.1f}x / "
            f"{percentile(base, 99) / statistics.median(p99_done):.1f}x |"
        )
    last = runs[-1]
    lines += ["", "last run, per agent: ready s, MiB from origin / peers, MiB uploaded:"]
    lines += [f"  {t.first_byte:.1f} s, {o / MiB:.0f} / {p / MiB:.0f}, {u / MiB:.0f}"
              for t, o, p, u in zip(last.timings, last.from_origin, last.from_peers, last.peers_uploaded, strict=True)]
    return "\n".join(lines)
