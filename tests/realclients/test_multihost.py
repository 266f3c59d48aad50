"""A multi-host deployment on network namespaces, deployed and checked with the real scripts.

Why: ``examples/multihost`` promises that a herd host and any number of agent hosts, each
pulling from its own agent on ``localhost:16000``, work together over a real network. Only
separate network namespaces make that honest on one machine: each "host" has its own
loopback (so ``127.0.0.1:16000`` is that host's agent), its own address on 10.201.0.0/24, its
own dockerd, and a cable that can be slowed (tbf on the herd) or pulled out.

What the tests check, as a user would:

* ``deploy_herd.sh`` / ``deploy_agent.sh --native`` bring the hosts up;
* each host's dockerd pulls through its agent, by ``127.0.0.1:16000/...`` and through
  ``registry-mirrors`` by Docker Hub names; image ID = config digest, manifest digest = the
  digest the push reported;
* ``test_multihost.sh`` and ``kraken-pull.sh`` (and its fallback to the herd) work on a host;
* agents on different hosts serve each other pieces of a big layer (their
  ``kraken_p2p_download_bytes_total{source="peer"}``), with the herd's uplink rate-limited;
* a host cut off mid-pull does not stop the others from finishing with the right bytes.

Every resource is named ``kmh-`` / lives on 10.201.0.0/24 and is removed in ``finally``
blocks, also when a test fails.
"""
from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.docker import Dockerd
from tests.support.multihost import (
    AGENT_REGISTRY,
    CHECKS,
    SCRIPTS,
    AgentHost,
    MiB,
    Pushed,
    assert_image,
    peer_and_origin_bytes,
    pull_by_address_and_mirror,
    push_images,
    run_on,
    skip_reason,
)
from tests.support.netns import NetnsHost, Network
from tests.support.process import NO_PROXY_HOSTS, client_env, kill_pid, pids_mentioning
from tests.support.registry_http import http_request, sha256_bytes
from tests.support.skopeo import skopeo_copy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.realclients

SUBNET = "10.201.0"
HERD_IP = f"{SUBNET}.1"
PROXY = f"{HERD_IP}:15000"
#: The big layer all agents pull at once; the origin sends it at HERD_RATE, so a copy takes
#: ~8 s from the origin alone: plenty of time for agents to swap the pieces they already have.
BIG_LAYER = 48 * MiB
HERD_RATE = "48mbit"
#: agent3 is cut off once it has received this much of the other big layer.
CUT_AFTER = 8 * MiB

#: Numbers the tests observed, printed at the end of the module (run with -s to see them).
OBSERVED: dict[str, str] = {}


# ---- the cluster ---------------------------------------------------------------------------


@dataclass
class Cluster:
    net: Network
    herd: NetnsHost
    herd_home: Path
    agents: list[AgentHost] = field(default_factory=list)

    def script_env(self, home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """What the deploy scripts get: the proxy trap, their own KRAKEN_HOME, this venv."""
        return client_env({"KRAKEN_HOME": str(home), "KRAKEN_PYTHON": sys.executable, **(extra or {})})

    def run_on(self, host: NetnsHost, argv: list[str], env: Mapping[str, str],
               timeout: float = 180.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` (inside its network namespace)."""
        return run_on(host, argv, env, timeout, check)

    def deploy_agent(self, agent: AgentHost) -> None:
        self.run_on(agent.host, [str(SCRIPTS / "deploy_agent.sh"), HERD_IP, agent.host.address, "--native"],
                    self.script_env(agent.home))

    def stop_agent(self, agent: AgentHost) -> None:
        self.run_on(agent.host, [str(SCRIPTS / "deploy_agent.sh"), "--stop"], self.script_env(agent.home), check=False)


def _kill_leftovers(marker: str) -> None:
    """Safety net after ``--stop``: any process still naming our KRAKEN_HOME is ours; stop it by PID."""
    for pid in pids_mentioning(marker):
        kill_pid(pid)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Bridge + herd + three agent hosts, each agent host with its own dockerd.

    Deployed with the example's scripts in ``--native`` mode. Torn down in reverse, also when
    setting up fails half-way: agents and herd by ``--stop`` (then by PID if anything is
    left), dockerds by ``Dockerd.stop`` (which unmounts their nsfs leftovers), then the
    namespaces, the bridge and the FORWARD rule.
    """
    reason = skip_reason("dockerd")
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="kmh-", dir="/tmp"))
    net = Network("kmh-", SUBNET)
    herd_home = base / "herd"
    # Daemons and clients reach the test subnet directly; everything else hits the proxy trap.
    assert net.cidr in NO_PROXY_HOSTS, NO_PROXY_HOSTS
    c: Cluster | None = None
    try:
        net.create()
        herd = net.add_host("herd", 1)
        c = Cluster(net, herd, herd_home)
        for i in (1, 2, 3):
            c.agents.append(AgentHost(net.add_host(f"agent{i}", i + 1), base / f"agent{i}"))
        # BIND_ADDRESS: the herd listens on its network address only (herd_param.sh).
        r = c.run_on(herd, [str(SCRIPTS / "deploy_herd.sh"), HERD_IP, "--native"],
                     c.script_env(herd_home, {"BIND_ADDRESS": HERD_IP}))
        assert f"herd up on {HERD_IP}" in r.stdout, r.stdout
        for agent in c.agents:
            c.deploy_agent(agent)
            agent.dockerd = Dockerd(netns=agent.name, registry_mirrors=[f"http://{AGENT_REGISTRY}"],
                                    insecure_registries=[net.cidr])
        # Three daemons start in parallel (~2 s each on their own).
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda a: a.docker().start(), c.agents))
        yield c
    finally:
        try:
            if c is not None:
                for agent in c.agents:
                    c.stop_agent(agent)
                c.run_on(c.herd, [str(SCRIPTS / "deploy_herd.sh"), "--stop"], c.script_env(herd_home), check=False)
            _kill_leftovers(str(base))
            if c is not None:
                for agent in c.agents:
                    if agent.dockerd is not None:
                        agent.dockerd.stop()
        finally:
            problems = net.destroy()
            shutil.rmtree(base, ignore_errors=True)
            if OBSERVED:
                print("\nmultihost observed:\n  " + "\n  ".join(f"{k}: {v}" for k, v in OBSERVED.items()))
            assert not problems, f"cleanup left: {problems}"


@pytest.fixture(scope="module")
def images(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pushed]:
    """Generated images pushed to the herd's proxy from the test's own (host) namespace."""
    layout = tmp_path_factory.mktemp("kmh-oci") / "oci"
    wanted = {
        "myapp": ("company/myapp:v1", [1 * MiB, 2 * MiB], 101),
        "box": ("library/kmhbox:latest", [1 * MiB], 102),
        "other": ("company/other:v1", [1 * MiB], 103),
        "big": ("test/big:v1", [BIG_LAYER], 104),
        "cut": ("test/cut:v1", [BIG_LAYER], 105),
    }
    return push_images(layout, PROXY, wanted)


# ---- tests -------------------------------------------------------------------------------


def test_hosts_are_separate_and_deployed(cluster: Cluster) -> None:
    """Each agent host answers on its own address; its 127.0.0.1:16000 is its own agent."""
    for agent in cluster.agents:
        assert http_request(f"http://{agent.host.address}:16002/health").body.strip() == b"OK"
        r = cluster.run_on(agent.host, ["curl", "-fsS", "--noproxy", "*", f"http://{AGENT_REGISTRY}/v2/"],
                           client_env())
        assert r.stdout.strip() == "{}"
    assert http_request(f"http://{HERD_IP}:15003/health").body.strip() == b"OK"
    # The herd's loopback is not an agent host's: nothing listens on 16000 there; and the herd,
    # deployed with BIND_ADDRESS=HERD_IP, listens on that address only.
    for port in (16000, 15000, 15003):
        r = cluster.run_on(cluster.herd, ["curl", "-sS", "--noproxy", "*", f"http://127.0.0.1:{port}/v2/"],
                           client_env(), check=False)
        assert r.returncode == 7, f"the herd namespace answers on 127.0.0.1:{port}: {r.stdout}{r.stderr}"


def test_docker_pulls_through_local_agent_and_mirror(cluster: Cluster, images: dict[str, Pushed]) -> None:
    """Every host's dockerd pulls by the agent's address and, via registry-mirrors, by Hub names."""
    myapp, box = images["myapp"], images["box"]
    for agent in cluster.agents:
        seconds = pull_by_address_and_mirror(agent, myapp)
        OBSERVED[f"{agent.name} pull {AGENT_REGISTRY}/{myapp.ref}"] = f"{seconds:.2f}s"
        agent.docker().pull("kmhbox")  # library/kmhbox:latest through the mirror
        assert_image(agent, "kmhbox:latest", box)


def test_example_check_scripts(cluster: Cluster, images: dict[str, Pushed]) -> None:
    """test_multihost.sh and kraken-pull.sh, run as documented on an agent host."""
    a1, a2 = cluster.agents[0], cluster.agents[1]
    r = cluster.run_on(a1.host, [str(CHECKS / "test_multihost.sh"), HERD_IP, AGENT_REGISTRY],
                       cluster.script_env(a1.home))
    assert "PASS:" in r.stdout, r.stdout

    other = images["other"]
    env = client_env({"DOCKER_HOST": a2.docker().host})
    r = cluster.run_on(a2.host, [str(CHECKS / "kraken-pull.sh"), other.ref, AGENT_REGISTRY], env)
    assert f"pulled {other.ref} through the agent at {AGENT_REGISTRY}" in r.stdout, r.stdout
    assert_image(a2, f"{AGENT_REGISTRY}/{other.ref}", other)
    # ... and tagged under its plain name, as if pulled directly.
    assert a2.docker().image_id(other.ref) == other.image.config_digest


def test_agents_swap_pieces_across_hosts(cluster: Cluster, images: dict[str, Pushed]) -> None:
    """Three hosts pull a 48 MiB layer at once through a slow herd: they serve each other."""
    big = images["big"]
    before = {a.name: peer_and_origin_bytes(a) for a in cluster.agents}
    cluster.herd.limit_egress(HERD_RATE)
    try:
        def pull(agent: AgentHost) -> float:
            t0 = time.monotonic()
            agent.docker().pull(f"{AGENT_REGISTRY}/{big.ref}")
            return time.monotonic() - t0

        with concurrent.futures.ThreadPoolExecutor(len(cluster.agents)) as pool:
            times = dict(zip([a.name for a in cluster.agents], pool.map(pull, cluster.agents), strict=True))
    finally:
        cluster.herd.clear_egress_limit()
    for agent in cluster.agents:
        assert_image(agent, f"{AGENT_REGISTRY}/{big.ref}", big)

    layer = big.image.layer_digests[0]
    size = big.image.layer_sizes[0]

    def whole_layer_counted() -> dict[str, tuple[float, float]] | None:
        """Per agent (from peers, from origins) since the pull, once each counts a whole layer."""
        now = {a.name: peer_and_origin_bytes(a) for a in cluster.agents}
        delta = {n: (now[n][0] - before[n][0], now[n][1] - before[n][1]) for n in now}
        return delta if all(p + o >= size for p, o in delta.values()) else None

    # Counters are refreshed every stats interval (1 s): wait until every agent has counted a
    # whole layer (what docker just verified it received).
    delta = wait_until(whole_layer_counted, 15, 0.2, message="every agent's metrics to count the whole big layer")
    from_peers = {n: p for n, (p, _) in delta.items()}
    OBSERVED["big layer"] = f"{size / MiB:.1f} MiB {layer}, herd egress {HERD_RATE}"
    OBSERVED["big pull seconds"] = ", ".join(f"{n} {t:.1f}" for n, t in times.items())
    OBSERVED["big bytes from peers / origin (MiB)"] = ", ".join(
        f"{n} {p / MiB:.1f}/{o / MiB:.1f}" for n, (p, o) in delta.items())
    # The herd served the layer fewer than three times: agents on other hosts sent the rest.
    assert sum(from_peers.values()) >= size / 2, OBSERVED["big bytes from peers / origin (MiB)"]
    assert sum(1 for p in from_peers.values() if p > 0) >= 2, OBSERVED["big bytes from peers / origin (MiB)"]


def test_host_cut_off_mid_pull(cluster: Cluster, images: dict[str, Pushed]) -> None:
    """agent3 loses its cable once its download has started; agent1 and agent2 still finish."""
    cut = images["cut"]
    a1, a2, a3 = cluster.agents
    ref = f"{AGENT_REGISTRY}/{cut.ref}"
    size = cut.image.layer_sizes[0]
    a3_before = sum(peer_and_origin_bytes(a3))
    cluster.herd.limit_egress(HERD_RATE)
    # agent3's pull never finishes: a process of ours, killed by its handle below.
    victim = subprocess.Popen([a3.docker().docker_binary, "-H", a3.docker().host, "pull", "-q", ref],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=client_env())
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            t0 = time.monotonic()
            survivors = [pool.submit(a.docker().pull, ref) for a in (a1, a2)]
            # Cut once agent3 holds pieces the others may be fetching from it (so they must
            # give up on a peer that vanished), well before it could have the whole layer.
            got = wait_until(lambda: (n := sum(peer_and_origin_bytes(a3)) - a3_before) >= CUT_AFTER and n,
                             60, 0.1, message=f"agent3 to receive {CUT_AFTER // MiB} MiB of the big layer")
            assert got < size, "agent3 finished before it could be cut off"
            a3.host.link(up=False)
            cut_at = time.monotonic() - t0
            done, _ = concurrent.futures.wait(survivors, timeout=180)
            assert len(done) == 2, "agent1 and agent2 did not finish their pulls within 180 s of agent3's loss"
            for f in survivors:
                f.result()
            done_at = time.monotonic() - t0
    finally:
        victim.kill()
        victim.wait(timeout=30)
        cluster.herd.clear_egress_limit()
        a3.host.link(up=True)  # later tests get a whole cluster back (agent3 is not used again)
    OBSERVED["cut-off"] = (f"agent3 cut at {cut_at:.1f}s with {got / MiB:.1f} MiB received; "
                           f"agent1+agent2 done at {done_at:.1f}s")
    assert victim.returncode != 0, "agent3's pull succeeded although its host was cut off"
    for agent in (a1, a2):
        assert_image(agent, ref, cut)
        # The agent's cache holds the exact bytes (not only what docker kept).
        body = http_request(f"http://{agent.host.address}:16000/v2/{cut.ref.split(':')[0]}/blobs/"
                            f"{cut.image.layer_digests[0]}", timeout=60).body
        assert sha256_bytes(body) == cut.image.layer_digests[0], f"{agent.name} serves other bytes"
        assert body == cut.image.blob_path(cut.image.layer_digests[0]).read_bytes()
    assert not a3.docker().has_image(ref)


def test_kraken_pull_falls_back_to_herd(cluster: Cluster, images: dict[str, Pushed]) -> None:
    """With the agent stopped, kraken-pull.sh pulls from HERD_HOST:15000 and says so."""
    a2 = cluster.agents[1]
    box = images["box"]
    cluster.stop_agent(a2)
    with pytest.raises(OSError):  # connection refused: the agent is really gone
        http_request(f"http://{a2.host.address}:16002/health", timeout=5)
    env = client_env({"DOCKER_HOST": a2.docker().host, "HERD_HOST": HERD_IP})
    name = "kmhfallback/box:v1"
    # A name this host never pulled: the agent's refusal, not a cache hit, decides.
    skopeo_copy(box.image.oci_ref, f"docker://{PROXY}/{name}")
    r = cluster.run_on(a2.host, [str(CHECKS / "kraken-pull.sh"), name, AGENT_REGISTRY], env)
    assert f"pulled {name} from the herd at {HERD_IP}:15000 (agent fallback)" in r.stdout, r.stdout
    assert "falling back to the herd" in r.stderr, r.stderr
    assert_image(a2, f"{PROXY}/{name}", box)
    assert a2.docker().image_id(name) == box.image.config_digest
