"""The tracker at scale: announces per second of one tracker process, and 10,000 agents.

Load comes from ``wrk`` (Debian's package, installed by scripts/install-system-deps.sh) with
a Lua script (:data:`LUA`) that makes every request a distinct, valid announce as libtorrent
sends it: agent ``n`` has its own peer_id, port and address (``ip=127.a.b.c``, the tracker
runs with ``trust_ip_param``, so every agent is a distinct host and the per-address limits
never merge them; loopback, so the tracker's probe of a seeder is answered at once), announces
one of :data:`INFO_HASHES` torrents, ``left=0`` for one agent in four, ``compact=1``. Every
answer is checked: status 200 and a bencoded dictionary with an ``interval``; wrk's own count
of non-2xx answers and the script's count of bad bodies are printed and must be 0.

1. Throughput: one tracker (``store: memory``, then ``store: redis`` with a real
   redis-server), wrk with one thread and :data:`CONNECTIONS` keep-alive connections as fast
   as they go, for ``--tracker-seconds``; announces/s is wrk's count of answers over its time.
2. 10,000 agents: two trackers sharing one redis-server, each announced to by half the agents,
   every agent once per ``announce_interval`` (the default, 5 s): each wrk connection waits
   :func:`delay_ms` between its announces, so the rate is the agents' (checked: printed next to
   the target). p50/p99 are wrk's latency distribution; RSS is each tracker's ``VmRSS`` at the
   end and ``VmHWM`` (peak).

The tracker, wrk and redis-server share the machine's cores (see docs/BENCHMARKS.md, "Tracker
at scale")."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import fresh_workdir
from tests.support.process import rss_mib
from tests.support.waiting import wait_until

INFO_HASHES = 64
CONNECTIONS = 64
#: wrk threads: one leaves the other core to the tracker (and redis-server).
THREADS = 1
AGENTS = 10_000
ANNOUNCE_INTERVAL = 5.0
#: wrk connections per tracker in the 10,000-agent run: each sends one announce per delay.
AGENT_CONNECTIONS = 250
GOAL_MEMORY = 5000
GOAL_REDIS = 3000

#: wrk's script. Its arguments (after ``--``): this wrk's agents are ``base .. base+agents-1``;
#: ``delay_ms``, the pause before each request (0: none); the number of torrents; wrk's threads
#: (thread ``i`` of ``n`` sends agents ``i, i+n, ...``).
LUA = r"""
bad, first_bad = 0, ""  -- globals: done() reads them from each thread
local counter, hashes, threads = 0, {}, {}
local base, agents, delay_ms, ihs, step = 0, 10000, 0, 64, 1

local function pct(s)
  return (s:gsub(".", function(c) return string.format("%%%02X", string.byte(c)) end))
end

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  base, agents, delay_ms, ihs, step = tonumber(args[1]), tonumber(args[2]), tonumber(args[3]), tonumber(args[4]),
    tonumber(args[5])
  for i = 0, ihs - 1 do
    hashes[i] = pct(string.format("bench-tracker-%06d", i))
  end
  counter = tid
end

function request()
  local a = base + counter % agents
  counter = counter + step
  local left = (a % 4 == 0) and 0 or 1048576
  local path = string.format(
    "/announce?info_hash=%s&peer_id=-BT0001-%012d&port=%d&uploaded=0&downloaded=0&left=%d" ..
    "&corrupt=0&key=%08x&compact=1&no_peer_id=1&supportcrypto=1&redundant=0&ip=127.%d.%d.%d",
    hashes[a % ihs], a, 10000 + a % 50000, left, a, math.floor(a / 65536) % 256, math.floor(a / 256) % 256, a % 256)
  return wrk.format("GET", path)
end

function delay()
  return delay_ms
end

function response(status, headers, body)
  if status ~= 200 or body:sub(1, 1) ~= "d" or body:sub(-1) ~= "e" or not body:find("8:intervali", 1, true) then
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. body:sub(1, 200) end
  end
end

function done(summary, latency, requests)
  local total_bad = 0
  local example = ""
  for _, t in ipairs(threads) do
    total_bad = total_bad + t:get("bad")
    if example == "" then example = t:get("first_bad") end
  end
  if example ~= "" then io.stderr:write("first bad answer: ", example, "\n") end
  io.write(string.format(
    '{"requests": %d, "us": %d, "non2xx": %d, "errors": %d, "bad": %d, "p50": %d, "p99": %d, "max": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    total_bad, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    errors: int
    bad: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def check(self) -> str:
        """``ok``, or what was wrong with the answers."""
        if self.non2xx or self.errors or self.bad:
            return f"FAILED: {self.non2xx} non-2xx, {self.errors} socket errors, {self.bad} bad bodies"
        return "ok"


def loadavg() -> str:
    """The 1-minute load average, printed with the figures: the machine may be shared."""
    return Path("/proc/loadavg").read_text().split()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _listening(port), 10.0, 0.05, message="redis-server to listen")
    return proc, port


def start_tracker(workdir: Path, name: str, redis_port: int | None) -> tuple[subprocess.Popen, int]:
    """A tracker process on a free port (``store: redis`` when ``redis_port`` is given). One
    origin is configured (on a closed port): its P2P address is looked up on every announce,
    as in a real cluster."""
    port = free_port()
    store = f"store: redis\nredis: {{addr: 127.0.0.1:{redis_port}}}\n" if redis_port else "store: memory\n"
    origin = f"127.0.0.1:{free_port()}"
    config = workdir / f"{name}.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"origins: {{hosts: ['{origin}']}}\norigin_p2p: {{'{origin}': '127.0.0.1:1'}}\n"
        f"announce_interval: {ANNOUNCE_INTERVAL}s\ntrust_ip_param: true\n{store}"
    )
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "kraken", "tracker", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.getcwd()})
    log.close()
    wait_until(lambda: _listening(port), 30.0, 0.1, message=f"{name} to listen",
               details=lambda: (workdir / f"{name}.log").read_text()[-2000:])
    return proc, port


def wrk(port: int, script: Path, seconds: float, connections: int, base: int, agents: int,
        delay_ms: int = 0) -> subprocess.Popen:
    argv = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "--timeout", "10s",
            "-s", str(script), f"http://127.0.0.1:{port}/announce", "--",
            str(base), str(agents), str(delay_ms), str(INFO_HASHES), str(THREADS)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> WrkResult:
    out, err = proc.communicate(timeout=600)
    line = next((x for x in out.splitlines() if x.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err or out}")
    r = json.loads(line)
    if err.strip():
        print(f"wrk: {err.strip()}", file=sys.stderr)
    return WrkResult(r["requests"], r["us"] / 1e6, r["non2xx"], r["errors"], r["bad"], r["p50"] / 1000,
                     r["p99"] / 1000)


def delay_ms(agents: int, connections: int) -> int:
    """The pause between one connection's announces so ``agents`` announce once per interval."""
    return round(ANNOUNCE_INTERVAL * 1000 * connections / agents)


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def throughput(workdir: Path, script: Path, seconds: float, redis: bool) -> tuple[WrkResult, float]:
    """Announces/s of one tracker under wrk, and the tracker's RSS after, in MiB."""
    procs = []
    try:
        redis_port = None
        if redis:
            redis_proc, redis_port = start_redis(workdir)
            procs.append(redis_proc)
        tracker, port = start_tracker(workdir, "tracker-redis" if redis else "tracker-memory", redis_port)
        procs.insert(0, tracker)
        finish(wrk(port, script, 2, CONNECTIONS, 0, AGENTS))  # warm-up: swarms filled, code paths hot
        result = finish(wrk(port, script, seconds, CONNECTIONS, 0, AGENTS))
        return result, rss_mib(tracker.pid)[0]
    finally:
        stop(*procs)


def agents_run(workdir: Path, script: Path, seconds: float, agents: int) -> list[tuple[WrkResult, float, float]]:
    """``agents`` agents at the announce interval over two trackers sharing one redis-server:
    per tracker, wrk's result and the tracker's RSS now and at its peak."""
    redis_proc, redis_port = start_redis(workdir)
    procs = [redis_proc]
    try:
        trackers = [start_tracker(workdir, f"tracker-{i}", redis_port) for i in range(2)]
        procs = [p for p, _ in trackers] + procs
        half = agents // 2
        pause = delay_ms(half, AGENT_CONNECTIONS)
        runs = [wrk(port, script, seconds, AGENT_CONNECTIONS, i * half, half, pause)
                for i, (_, port) in enumerate(trackers)]
        results = [finish(r) for r in runs]
        return [(res, *rss_mib(proc.pid)) for res, (proc, _) in zip(results, trackers, strict=True)]
    finally:
        stop(*procs)


def run(args: argparse.Namespace) -> str:
    if shutil.which("wrk") is None:
        return "tracker: wrk is not installed (make system-deps)"
    workdir = fresh_workdir(args.workdir, "tracker")
    script = workdir / "announce.lua"
    script.write_text(LUA)
    seconds = args.tracker_seconds
    lines = [f"## tracker (wrk -t{THREADS} -c{CONNECTIONS}, {seconds:.0f} s each, {INFO_HASHES} torrents, "
             f"load {loadavg()} at start)",
             "| store | announces/s | goal | p50 ms | p99 ms | tracker RSS MiB | answers |",
             "|---|---|---|---|---|---|---|"]
    for redis, goal in ((False, GOAL_MEMORY), (True, GOAL_REDIS)):
        res, rss = throughput(workdir, script, seconds, redis)
        lines.append(f"| {'redis' if redis else 'memory'} | {res.rate:.0f} | >= {goal} | {res.p50_ms:.1f} | "
                     f"{res.p99_ms:.1f} | {rss:.0f} | {res.check()} |")
    agent_seconds = args.tracker_agent_seconds
    target = args.tracker_agents / ANNOUNCE_INTERVAL / 2
    lines += ["", f"{args.tracker_agents} agents, one announce each per {ANNOUNCE_INTERVAL:.0f} s, two trackers "
              f"sharing one redis-server, {agent_seconds:.0f} s (wrk -c{AGENT_CONNECTIONS} per tracker, "
              f"load {loadavg()} at start)",
              "| tracker | announces/s (target) | p50 ms | p99 ms | RSS MiB (peak) | answers |",
              "|---|---|---|---|---|---|"]
    started = time.monotonic()
    for i, (res, rss, peak) in enumerate(agents_run(workdir, script, agent_seconds, args.tracker_agents)):
        lines.append(f"| {i} | {res.rate:.0f} ({target:.0f}) | {res.p50_ms:.1f} | {res.p99_ms:.1f} | "
                     f"{rss:.0f} ({peak:.0f}) | {res.check()} |")
    lines.append(f"(agents run took {time.monotonic() - started:.0f} s)")
    return "\n".join(lines)
