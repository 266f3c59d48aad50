"""A herd on three hosts survives a ``kill -9`` of an origin, a tracker and a build-index.

Why: issue 13 ("no single point of failure") promises that losing any one herd process, mid-push
or mid-pull, costs nothing a user sees. Network namespaces make three herd hosts and six agent
hosts on one machine, deployed with the real scripts (``HERD_HOSTS`` in
``examples/multihost/herd_param.sh``): every herd host runs an origin (one ring, each blob on two)
and a proxy, herd1 and herd2 a tracker and a build-index, herd1 also testfs and the trackers'
redis-server (the documented remaining single points of failure, never killed here).

The test, as a user would see it:

* pushes through herd1's proxy (skopeo) while herd2's origin is killed with ``kill -9`` after
  the first push: every push completes with the digest it was generated with;
* five agent hosts pull every image (registry API over HTTP, manifests by tag and every blob)
  while the tracker and the build-index the agents use are killed: every pull completes with
  the right bytes;
* each herd host's supervisor starts its killed process again (``RESTART_AFTER``); then every
  image pulls again, also on a sixth agent host deployed only now, and every proxy serves every
  manifest.

Every resource is named ``kha-`` / lives on 10.204.0.0/24 and is removed in ``finally``.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.metrics import metric_sum
from tests.support.multihost import SCRIPTS, MiB, run_on, skip_reason
from tests.support.netns import NetnsHost, Network
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.process import NO_PROXY_HOSTS, client_env, kill_pid, pid_alive, pids_mentioning
from tests.support.registry_http import MANIFEST_ACCEPT, http_request, sha256_bytes
from tests.support.skopeo import skopeo_copy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.realclients

SUBNET = "10.204.0"
HERDS = [f"{SUBNET}.{i}" for i in (1, 2, 3)]
TRACKERS = HERDS[:2]
BUILD_INDEXES = HERDS[:2]
AGENTS = 5
#: Seconds a killed herd process stays down before its host's supervisor starts it again:
#: long enough for the pushes and pulls around the kill to need the other copies.
RESTART_AFTER = "6"
#: image key -> (repo:tag, layer sizes, seed)
#: Growing sizes: when the first push is done (and herd2's origin is killed), the others are
#: still streaming layers.
IMAGES = {f"img{i}": (f"ha/app{i}:v1", [(1 + i) * MiB, 1 * MiB], 300 + i) for i in range(6)}


@dataclass
class Herd:
    net: Network
    base: Path
    herds: list[NetnsHost] = field(default_factory=list)
    agents: list[NetnsHost] = field(default_factory=list)

    def env(self, host: NetnsHost) -> dict[str, str]:
        return client_env({
            "KRAKEN_HOME": str(self.base / host.name), "KRAKEN_PYTHON": sys.executable,
            "HERD_HOSTS": " ".join(HERDS), "TRACKER_HOSTS": " ".join(TRACKERS),
            "BUILD_INDEX_HOSTS": " ".join(BUILD_INDEXES), "RESTART_AFTER": RESTART_AFTER,
        })

    def deploy_herd(self, host: NetnsHost) -> None:
        r = run_on(host, [str(SCRIPTS / "deploy_herd.sh"), host.address, "--native"], self.env(host), timeout=120)
        assert f"herd up on {host.address}" in r.stdout, r.stdout + r.stderr

    def deploy_agent(self, host: NetnsHost) -> None:
        r = run_on(host, [str(SCRIPTS / "deploy_agent.sh"), HERDS[0], host.address, "--native"], self.env(host),
                   timeout=120)
        assert f"agent up on {host.address}" in r.stdout, r.stdout + r.stderr

    def add_agent(self, i: int) -> NetnsHost:
        host = self.net.add_host(f"a{i}", 10 + i)
        self.agents.append(host)
        return host

    def state(self, herd: NetnsHost) -> dict[str, dict[str, object]]:
        """The herd host's supervisor state: its processes by name (pid, port, probe)."""
        data = json.loads((self.base / herd.name / "herd" / "devcluster.json").read_text())
        processes: dict[str, dict[str, object]] = data["processes"]
        return processes

    def kill9(self, herd: NetnsHost, name: str) -> int:
        """``kill -9`` of one herd process; returns its PID."""
        pid = int(str(self.state(herd)[name]["pid"]))
        os.kill(pid, signal.SIGKILL)
        return pid

    def restarted(self, herd: NetnsHost, name: str, old_pid: int) -> bool:
        """The supervisor started ``name`` again (another PID) and it answers its probe."""
        info = self.state(herd)[name]
        if int(str(info["pid"])) == old_pid or not pid_alive(int(str(info["pid"]))):
            return False
        return http_request(str(info["probe"]), timeout=5).status == 200


@pytest.fixture(scope="module")
def herd() -> Iterator[Herd]:
    """Bridge, three herd hosts and five agent hosts, deployed with the example's scripts."""
    reason = skip_reason("skopeo", "redis-server")
    if reason:
        pytest.skip(reason)
    assert f"{SUBNET}.0/24" in NO_PROXY_HOSTS, NO_PROXY_HOSTS
    base = Path(tempfile.mkdtemp(prefix="kha-", dir="/tmp"))
    net = Network("kha-", SUBNET)
    h = Herd(net, base)
    try:
        net.create()
        h.herds = [net.add_host(f"herd{i + 1}", i + 1) for i in range(3)]
        for i in range(AGENTS):
            h.add_agent(i + 1)
        h.deploy_herd(h.herds[0])  # testfs and redis: the others need them to start
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(h.deploy_herd, h.herds[1:]))
            list(pool.map(h.deploy_agent, h.agents))
        yield h
    finally:
        try:
            for host in [*h.agents, *h.herds]:
                role = "agent" if host in h.agents else "herd"
                run_on(host, [str(SCRIPTS / f"deploy_{role}.sh"), "--stop"], h.env(host), timeout=90, check=False)
            for pid in pids_mentioning(str(base)):
                kill_pid(pid)
        finally:
            problems = net.destroy()
            shutil.rmtree(base, ignore_errors=True)
            assert not problems, f"cleanup left: {problems}"


def pull(agent: str, ref: str, image: GeneratedImage) -> None:
    """Pull ``ref`` through the agent at ``agent`` (host:port) as a runtime would: the manifest
    by tag, then every blob; each must be the pushed bytes."""
    repo, tag = ref.rsplit(":", 1)
    r = http_request(f"http://{agent}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}, timeout=120)
    assert r.status == 200, f"{agent} {ref} manifest -> {r.status} {r.body[:200]!r}"
    assert sha256_bytes(r.body) == image.manifest_digest, f"{agent} {ref}: another manifest"
    for digest in [image.config_digest, *image.layer_digests]:
        b = http_request(f"http://{agent}/v2/{repo}/blobs/{digest}", timeout=120)
        assert b.status == 200, f"{agent} {ref} blob {digest} -> {b.status} {b.body[:200]!r}"
        assert sha256_bytes(b.body) == digest, f"{agent} {ref}: blob {digest} has other bytes"


#: What grows on the tracker and on the build-index an agent uses: (port, counter).
TRACKER_USE = (15003, "kraken_tracker_announces_total")
BUILD_INDEX_USE = (15004, "kraken_buildindex_tag_gets_total")


def counts(hosts: list[str], use: tuple[int, str]) -> dict[str, float]:
    """``use``'s counter on each of ``hosts``, by address."""
    port, name = use
    return {addr: metric_sum(http_request(f"http://{addr}:{port}/metrics").body.decode(), name) for addr in hosts}


def in_use(h: Herd, hosts: list[str], use: tuple[int, str], before: dict[str, float]) -> NetnsHost:
    """The one of ``hosts`` the agents use (its counter grew since ``before``). Each agent
    prefers a tracker and a build-index by its hostname, which the namespaces share: all
    agents use the same one, the one whose loss they must survive."""
    by_addr = {host.address: host for host in h.herds}
    grown = wait_until(lambda: [a for a, n in counts(hosts, use).items() if n > before[a]], 30, 0.2,
                       message=f"one of {hosts} to count the agents' requests ({use[1]})")
    return by_addr[grown[0]]


def agent_failovers(h: Herd) -> tuple[float, float]:
    """(tracker failovers, build-index failovers) the agents counted, summed."""
    texts = [http_request(f"http://{a.address}:16002/metrics").body.decode() for a in h.agents]
    return (sum(metric_sum(t, "kraken_agent_tracker_failovers_total") for t in texts),
            sum(metric_sum(t, "kraken_build_index_failovers_total") for t in texts))


def test_push_and_pull_through_kills(herd: Herd, tmp_path: Path) -> None:
    h = herd
    images = {key: generate_oci_layout(tmp_path / "oci", key, sizes, seed=seed)
              for key, (_, sizes, seed) in IMAGES.items()}
    refs = {key: ref for key, (ref, _, _) in IMAGES.items()}
    proxy = f"{HERDS[0]}:15000"
    killed: list[tuple[NetnsHost, str, int]] = []

    # ---- pushes, herd2's origin killed after the first one completes ----
    first_done = threading.Event()

    def push(key: str) -> str:
        digest_file = tmp_path / f"{key}.digest"
        skopeo_copy(images[key].oci_ref, f"docker://{proxy}/{refs[key]}", extra_args=["--digestfile", str(digest_file)])
        first_done.set()
        return digest_file.read_text().strip()

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        pushes = {key: pool.submit(push, key) for key in images}
        wait_until(first_done.is_set, 120, 0.05, message="the first push")
        killed.append((h.herds[1], "origin", h.kill9(h.herds[1], "origin")))
        pushed = {key: f.result(timeout=180) for key, f in pushes.items()}
    for key, digest in pushed.items():
        assert digest == images[key].manifest_digest, f"push of {refs[key]} reported another manifest digest"

    # ---- pulls on every agent host, the agents' tracker and a build-index killed mid-pull ----
    before = (counts(TRACKERS, TRACKER_USE), counts(BUILD_INDEXES, BUILD_INDEX_USE))
    jobs = [(agent, key) for key in images for agent in h.agents]
    pulled = threading.Semaphore(0)

    def pull_one(job: tuple[NetnsHost, str]) -> None:
        agent, key = job
        pull(f"{agent.address}:16000", refs[key], images[key])
        pulled.release()

    with concurrent.futures.ThreadPoolExecutor(AGENTS) as pool:
        futures = [pool.submit(pull_one, job) for job in jobs]
        wait_until(lambda: pulled.acquire(blocking=False), 120, 0.05, message="the first pull")
        tracker = in_use(h, TRACKERS, TRACKER_USE, before[0])
        build_index = in_use(h, BUILD_INDEXES, BUILD_INDEX_USE, before[1])
        killed.append((tracker, "tracker", h.kill9(tracker, "tracker")))
        killed.append((build_index, "build-index", h.kill9(build_index, "build-index")))
        for f in futures:
            f.result(timeout=180)
    # The kills hit work in flight: the agents went to the other tracker and build-index.
    tracker_failovers, build_index_failovers = agent_failovers(h)
    assert tracker_failovers > 0 and build_index_failovers > 0, agent_failovers(h)

    # ---- the killed processes come back; nothing is lost ----
    for host, name, pid in killed:
        wait_until(lambda host=host, name=name, pid=pid: h.restarted(host, name, pid), 60, 0.2,
                   message=f"{name} on {host.name} to be started again")
    fresh = h.add_agent(AGENTS + 1)
    h.deploy_agent(fresh)
    with concurrent.futures.ThreadPoolExecutor(AGENTS + 1) as pool:
        again = [pool.submit(pull, f"{a.address}:16000", refs[k], images[k]) for k in images for a in h.agents]
        for f in again:
            f.result(timeout=180)
    for herd_host in h.herds:
        for key, image in images.items():
            repo, tag = refs[key].rsplit(":", 1)
            r = http_request(f"http://{herd_host.address}:15000/v2/{repo}/manifests/{tag}",
                             headers={"Accept": MANIFEST_ACCEPT}, timeout=60)
            assert r.status == 200 and sha256_bytes(r.body) == image.manifest_digest, (
                f"{herd_host.name}'s proxy: {refs[key]} -> {r.status}")
