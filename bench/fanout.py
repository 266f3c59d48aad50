"""Fan-out: N agents (separate processes) pull one blob at once with every upload capped.

The origin and every agent upload at most R bytes/s; downloads are not limited. The fluid
lower bound on the time for all N to hold the blob of S bytes is

    T_min = max(S / R_origin, N * S / (R_origin + N * R))

(the origin must send every byte at least once; all N copies must be uploaded by someone).
Each agent's time runs from the moment the N requests are sent together to curl's last byte
of the blob from its agent server: agents stream a cold blob while it downloads
(:mod:`kraken.agent.streaming`) and send its last piece only once the whole blob's sha256
matched and it is in the cache, so the last byte is the moment the blob is delivered and
verified. Curl's first byte (the first verified piece) is printed too.

The baseline is the same N pulls from Debian's distribution registry whose egress is capped
at R (HTB in a network namespace: :mod:`bench.capped_registry`), the central-registry setup
the P2P design replaces.

``--grid reduced`` (the default) and ``--grid full`` run one pull at each point of a grid of N,
S and R instead (:func:`run_grid`); ``--grid point`` runs the one point given by ``--agents``,
``--fanout-size-mb`` and ``--rate-mb``, with repetitions and the baseline.
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
from kraken.devcluster import Process
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


def _cpu_seconds(procs: list[Process]) -> float:
    """User + system CPU these processes have used so far (``/proc/<pid>/stat``)."""
    total = 0
    for proc in procs:
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
    """Every second: MiB/s uploaded by the origin and by the pulling agents together (shows
    where the swarm leaves upload capacity unused)."""

    def __init__(self, herd: Herd, agents: list[Process]) -> None:
        super().__init__(daemon=True)
        self.herd = herd
        self.agents = agents
        self.rows: list[tuple[float, float, float]] = []
        self._done = threading.Event()

    def sample(self) -> tuple[float, float]:
        agents = sum(metric_sum(scrape(f"http://127.0.0.1:{a.health_port}"), "kraken_p2p_upload_bytes_total")
                     for a in self.agents)
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


def _agent_counters(agents: list[Process]) -> list[tuple[float, float, float]]:
    """Per agent: bytes downloaded from origins, from peers, and uploaded (all time)."""
    rows = []
    for agent in agents:
        text = scrape(f"http://127.0.0.1:{agent.health_port}")
        rows.append((metric_sum(text, "kraken_p2p_download_bytes_total", source="origin"),
                     metric_sum(text, "kraken_p2p_download_bytes_total", source="peer"),
                     metric_sum(text, "kraken_p2p_upload_bytes_total")))
    return rows


def pull_everywhere(
    herd: Herd, digest: Digest, stats_interval: float, agents: list[Process] | None = None
) -> FanoutRun:
    """Every agent (or each of ``agents``) pulls the blob at once; afterwards each drops it
    again (cold for the next run)."""
    agents = herd.agents if agents is None else agents
    origin_before, agents_before = _origin_upload(herd), _agent_counters(agents)
    cpu_before = _cpu_seconds([herd.origin, *agents])
    ns = REPO.replace("/", "%2F")
    procs = [start_curl(f"http://127.0.0.1:{a.health_port}/namespace/{ns}/blobs/{digest}") for a in agents]
    timeline = Timeline(herd, agents)
    timeline.start()
    timings = [finish_curl(p) for p in procs]
    cpu = _cpu_seconds([herd.origin, *agents]) - cpu_before
    timeline.stop()
    origin_uploaded = _settled_origin_upload(herd, 2 * stats_interval) - origin_before
    deltas = [tuple(a - b for a, b in zip(after, before, strict=True))
              for after, before in zip(_agent_counters(agents), agents_before, strict=True)]
    for agent in agents:
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
    if args.grid != "point":
        return run_grid(args, GRIDS[args.grid])
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


def t_min(n: int, size: int, rate: int) -> float:
    """The fluid lower bound (module docstring) with the origin and every agent capped at ``rate``."""
    return max(size / rate, n * size / (rate + n * rate))


def _report(n: int, size: int, rate: int, runs: list[FanoutRun], baseline: list[CurlTiming], tls: bool = False) -> str:
    bound = t_min(n, size, rate)
    for run in runs:
        assert all(t.size == size for t in run.timings), [t.size for t in run.timings]
    first = [[t.first_byte for t in run.timings] for run in runs]
    done = [[t.total for t in run.timings] for run in runs]

    def across(values: list[float], fmt: str) -> str:
        """The median over the runs, then every run's value."""
        return f"{fmt.format(statistics.median(values))} ({', '.join(fmt.format(v) for v in values)})"

    from_origin = statistics.median(sum(r.from_origin) / size for r in runs)
    from_peers = statistics.median(sum(r.from_peers) / size for r in runs)
    p50_first, p99_first = [percentile(r, 50) for r in first], [percentile(r, 99) for r in first]
    p50_done, p99_done = [percentile(d, 50) for d in done], [percentile(d, 99) for d in done]
    lines = [
        f"### Fan-out: {n} agents pull one {size / MiB:.0f} MiB blob at once, uploads capped at {rate / MiB:.0f} MiB/s"
        + (", pieces over TLS (p2p.tls)" if tls else ""),
        "",
        f"T_min = max(S/R, N*S/(R + N*R)) = {bound:.1f} s; {len(runs)} runs: median (each run)",
        "",
        "| measure | value | / T_min |",
        "|---|---|---|",
        *(f"| {label} | {across(values, '{:.1f}')} s | {across([v / bound for v in values], '{:.2f}')} |"
          for label, values in (("p50 first byte (first verified piece)", p50_first), ("p99 first byte", p99_first),
                                ("p50 last byte (blob verified, cached)", p50_done),
                                ("p99 last byte", p99_done))),
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
    lines += ["", "last run, per agent: last byte s, MiB from origin / peers, MiB uploaded:"]
    lines += [f"  {t.total:.1f} s, {o / MiB:.0f} / {p / MiB:.0f}, {u / MiB:.0f}"
              for t, o, p, u in zip(last.timings, last.from_origin, last.from_peers, last.peers_uploaded, strict=True)]
    return "\n".join(lines)


@dataclass(frozen=True)
class GridPoint:
    """One point of the grid: ``agents`` pull a blob of ``size_mb`` MiB, uploads capped at ``rate_mb`` MiB/s."""

    agents: int
    size_mb: int
    rate_mb: int


#: ``reduced`` runs in ``make bench`` (a few minutes); ``full`` is issue 14's grid, run once and recorded.
GRIDS: dict[str, list[GridPoint]] = {
    "reduced": [GridPoint(n, 256, r) for r in (20, 40) for n in (4, 8)],
    "full": [GridPoint(n, s, r) for r in (10, 20, 40) for s in (256, 1024) for n in (4, 8, 16)],
}


@dataclass
class GridResult:
    point: GridPoint
    run: FanoutRun


def run_grid(args: argparse.Namespace, points: list[GridPoint]) -> str:
    """One pull of every point, no distribution baseline.

    One herd per cap (the cap is a start-up setting), with as many agents as the largest point
    of that cap needs; a point uses the first N of them. Every point pulls a blob of its own,
    freshly pushed: the tracker numbers a blob's pullers from slot 0 (:mod:`kraken.tracker.slots`),
    as for a blob nobody pulled before, and each agent's cache is cold.
    """
    workdir = fresh_workdir(args.workdir, "fanout")
    stats_interval = 0.5
    results: list[GridResult] = []
    for rate_mb in sorted({p.rate_mb for p in points}):
        group = [p for p in points if p.rate_mb == rate_mb]
        p2p = {"upload_rate_limit": rate_mb * MiB, "stats_interval": f"{int(stats_interval * 1000)}ms"}
        herd = start_herd(workdir / f"herd-{rate_mb}", agents=max(p.agents for p in group),
                          overrides={"origin": {"p2p": p2p}, "agent": {"p2p": p2p}})
        try:
            for point in group:
                blob = workdir / "blob"
                digest = random_blob_file(blob, point.size_mb * MiB)
                push_blob_file(herd.proxy.url, REPO, blob, digest)
                blob.unlink()
                wait_idle(herd)
                wait_metainfo(herd.origin.url + "/internal", REPO, digest)
                print(f"grid point N={point.agents} S={point.size_mb} MiB R={rate_mb} MiB/s", flush=True)
                results.append(GridResult(point, pull_everywhere(herd, digest, stats_interval,
                                                                 herd.agents[:point.agents])))
        finally:
            herd.stop()
    return _grid_report(results)


def _grid_report(results: list[GridResult]) -> str:
    lines = [
        "### Fan-out on a grid: N agents, blob of S MiB, every upload capped at R MiB/s (one pull per point)",
        "",
        "T_min = max(S/R, N*S/(R + N*R)). Done: curl's last byte (the last piece is sent only once the "
        "blob's sha256 matched and it is in the agent's cache); first byte: the first verified piece streamed. "
        "Central registry: N*S/R, the time N pulls take through one pipe capped at R (computed, not measured: "
        "the capped registry is limited by construction).",
        "",
        "| N | S MiB | R MiB/s | T_min s | p50 done / T_min | p99 done / T_min | p50 first byte s "
        "| origin copies | central registry s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    worst = [0.0, 0.0, 0.0]
    for result in sorted(results, key=lambda r: (r.point.size_mb, r.point.rate_mb, r.point.agents)):
        point, run = result.point, result.run
        size, rate = point.size_mb * MiB, point.rate_mb * MiB
        assert all(t.size == size for t in run.timings), [t.size for t in run.timings]
        bound = t_min(point.agents, size, rate)
        done = [t.total for t in run.timings]
        p50, p99 = percentile(done, 50) / bound, percentile(done, 99) / bound
        first = percentile([t.first_byte for t in run.timings], 50)
        copies = run.origin_uploaded / size
        worst = [max(worst[0], p50), max(worst[1], p99), max(worst[2], copies)]
        lines.append(f"| {point.agents} | {point.size_mb} | {point.rate_mb} | {bound:.1f} | {p50:.2f} | {p99:.2f} "
                     f"| {first:.1f} | {copies:.2f} | {point.agents * size / rate:.0f} |")
    lines += ["", f"worst over the grid: p50 {worst[0]:.2f} x T_min, p99 {worst[1]:.2f} x T_min, "
              f"origin {worst[2]:.2f} copies (goal: 1.10, 1.20, 1.10)"]
    return "\n".join(lines)
