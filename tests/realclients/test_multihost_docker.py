"""The Kraken images deployed the two ways only Docker runs them, each host a network namespace
with its own dockerd.

Why: ``deploy_herd.sh`` / ``deploy_agent.sh --docker`` (the ``kraken-herd`` / ``kraken-agent``
containers with host networking) and the ``bridge`` network mode of ``make devcluster`` (what
Docker Desktop on a Mac gets) are what users run, yet nothing exercised them. A dockerd started
inside a namespace gives its ``--network host`` containers that namespace's network, which is
exactly what a VM host looks like; and a namespace keeps the bridge mode's network, its
published ports and the daemon's iptables rules off this machine.

What the tests check, as a user would:

* multi-host, Docker mode: herd on 10.202.0.1, agents on .2 and .3, deployed with the scripts;
  the containers run as ``kraken`` and become healthy; an image pushed with skopeo to the herd
  is pulled by each agent host's dockerd from ``127.0.0.1:16000`` and through
  ``registry-mirrors`` by a Docker Hub name (image ID = config digest, RepoDigests = the pushed
  digest); ``test_multihost.sh`` passes on an agent host; the second agent takes pieces of a
  24 MiB layer from the first (its ``kraken_p2p_download_bytes_total{source="peer"}``);
  ``--stop`` removes the containers;
* devcluster, ``KRAKEN_DOCKER_NETWORK=bridge``: ``python -m kraken.devcluster start`` creates
  the ``kraken`` network, a real ``docker push localhost:15000`` and pulls from
  ``localhost:16000`` then ``localhost:17000`` give the pushed digests, agent-two takes bytes
  from agent-one at its bridge address, and ``stop --docker`` leaves no container and no
  network.

Every resource is named ``kmd-`` / lives on 10.202.0.0/24 and is removed in ``finally`` blocks,
also when a test fails.
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

from kraken.agent.config import DownloadConfig
from tests.support.docker import Dockerd
from tests.support.kraken_images import save_images
from tests.support.metrics import metric
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
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.process import NO_PROXY_HOSTS, client_env
from tests.support.registry_http import http_request
from tests.support.waiting import wait_until

pytestmark = pytest.mark.realclients

SUBNET = "10.202.0"
HERD_IP = f"{SUBNET}.1"
PROXY = f"{HERD_IP}:15000"
#: The devcluster's namespace, on the same bridge (it talks to nobody there).
DEV_OCTET = 10
#: Six 4 MiB pieces: enough for the second agent to fetch some from the first.
BIG_LAYER = 24 * MiB
#: The devcluster's dockerd runs like a user's (Docker Desktop's too): iptables on, so its
#: ``kraken`` bridge network and the ports published on 127.0.0.1 get their NAT/FORWARD rules,
#: in the namespace's own iptables (never this machine's). The test daemons' default
#: (``iptables: false``) works as well: docker-proxy alone then serves the published ports.
BRIDGE_DAEMON_CONFIG: dict[str, object] = {"iptables": True, "ip-forward": True}

#: Numbers the tests observed, printed at the end of the module (run with -s to see them).
OBSERVED: dict[str, str] = {}


def _user_env(d: Dockerd, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A user's shell on a host: the docker CLI on that host's daemon, this venv's Python, no
    devcluster mode forced from outside, the proxy trap."""
    env = client_env({"DOCKER_HOST": d.host, "DOCKER_CONFIG": str(d.docker_config_dir),
                      "KRAKEN_PYTHON": sys.executable, **(extra or {})})
    for key in ("KRAKEN_DEVCLUSTER", "KRAKEN_DOCKER_NETWORK", "KRAKEN_DOCKER_SUBNET", "DEVCLUSTER_DIR"):
        if key not in (extra or {}):
            env.pop(key, None)
    return env


def _remove_containers(d: Dockerd) -> None:
    """Safety net after a stop: remove whatever containers the host's daemon still has."""
    ids = d.run("ps", "-aq", check=False).stdout.split()
    if ids:
        d.run("rm", "-f", *ids, check=False)


def _ps(d: Dockerd, name_filter: str = "kraken") -> dict[str, str]:
    """``docker ps`` as a user reads it: container name -> its status (``Up 5s (healthy)``)."""
    r = d.run("ps", "-a", "--filter", f"name={name_filter}", "--format", "{{.Names}}\t{{.Status}}")
    return dict(line.split("\t", 1) for line in r.stdout.splitlines())


def _peers_connected(d: Dockerd, container: str) -> set[str]:
    """The addresses of the peers the agent in ``container`` connected with (its p2p log)."""
    log = d.run("logs", container).stdout
    fields = [dict(f.split("=", 1) for f in line.split() if "=" in f)
              for line in log.splitlines() if " peer connected " in line]
    return {f["peer"].rsplit(":", 1)[0] for f in fields if "peer" in f}


def _start_daemons(daemons: list[Dockerd], source: Dockerd) -> None:
    """Start the daemons and copy the Kraken images into each (in parallel: ~10 s each)."""
    def up(d: Dockerd) -> None:
        d.start()
        save_images(source, d)

    with concurrent.futures.ThreadPoolExecutor(len(daemons)) as pool:
        list(pool.map(up, daemons))


@pytest.fixture(scope="module")
def net() -> Iterator[Network]:
    """The bridge on 10.202.0.0/24 that every host of this module is plugged into."""
    reason = skip_reason("dockerd", "skopeo", "curl")
    if reason:
        pytest.skip(reason)
    # Daemons and clients reach the test subnet directly; everything else hits the proxy trap.
    n = Network("kmd-", SUBNET)
    assert n.cidr in NO_PROXY_HOSTS, NO_PROXY_HOSTS
    try:
        n.create()
        yield n
    finally:
        problems = n.destroy()
        if OBSERVED:
            print("\nmultihost docker observed:\n  " + "\n  ".join(f"{k}: {v}" for k, v in OBSERVED.items()))
        assert not problems, f"cleanup left: {problems}"


# ---- multi-host, Docker mode ------------------------------------------------------------


@dataclass
class DockerCluster:
    herd: AgentHost  # the herd host: its namespace, KRAKEN_HOME and dockerd
    agents: list[AgentHost] = field(default_factory=list)

    def env(self, host: AgentHost) -> dict[str, str]:
        return _user_env(host.docker(), {"KRAKEN_HOME": str(host.home)})

    def herd_script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_on(self.herd.host, [str(SCRIPTS / "deploy_herd.sh"), *args], self.env(self.herd), check=check)

    def agent_script(self, agent: AgentHost, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_on(agent.host, [str(SCRIPTS / "deploy_agent.sh"), *args], self.env(agent), check=check)


@pytest.fixture(scope="module")
def docker_cluster(net: Network, kraken_images: None, dockerd: Dockerd) -> Iterator[DockerCluster]:
    """Herd host + two agent hosts, each with its own dockerd holding the Kraken images,
    deployed with ``deploy_*.sh --docker``.

    Torn down in reverse, also when setting up fails half-way: ``--stop`` on every host, then
    whatever container is left, then the daemons (``Dockerd.stop`` unmounts their nsfs
    leftovers); ``net`` removes the namespaces and the bridge.
    """
    base = Path(tempfile.mkdtemp(prefix="kmd-", dir="/tmp"))
    herd = AgentHost(net.add_host("herd", 1), base / "herd")
    c = DockerCluster(herd)
    try:
        herd.dockerd = Dockerd(netns=herd.name)
        for i in (1, 2):
            agent = AgentHost(net.add_host(f"agent{i}", i + 1), base / f"agent{i}")
            agent.dockerd = Dockerd(netns=agent.name, registry_mirrors=[f"http://{AGENT_REGISTRY}"],
                                    insecure_registries=[net.cidr])
            c.agents.append(agent)
        t0 = time.monotonic()
        _start_daemons([h.docker() for h in (herd, *c.agents)], dockerd)
        OBSERVED["3 dockerds started, images copied"] = f"{time.monotonic() - t0:.1f}s"
        t0 = time.monotonic()
        r = c.herd_script(HERD_IP, "--docker")
        assert f"herd up on {HERD_IP} (docker)" in r.stdout, r.stdout
        for agent in c.agents:
            r = c.agent_script(agent, HERD_IP, agent.host.address, "--docker")
            assert f"agent up on {agent.host.address} (docker)" in r.stdout, r.stdout
        OBSERVED["herd + 2 agents deployed (--docker)"] = f"{time.monotonic() - t0:.1f}s"
        yield c
    finally:
        try:
            for agent in c.agents:
                if agent.dockerd is not None and agent.dockerd.process is not None:
                    c.agent_script(agent, "--stop", check=False)
            if herd.dockerd is not None and herd.dockerd.process is not None:
                c.herd_script("--stop", check=False)
        finally:
            for h in (herd, *c.agents):
                if h.dockerd is not None:
                    try:
                        if h.dockerd.process is not None and h.dockerd.process.alive():
                            _remove_containers(h.dockerd)
                    finally:
                        h.dockerd.stop()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pushed(docker_cluster: DockerCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pushed]:
    """Generated images pushed with skopeo to the herd's proxy, from the test's own namespace."""
    layout = tmp_path_factory.mktemp("kmd-oci") / "oci"
    wanted = {
        "app": ("company/kmdapp:v1", [1 * MiB, 2 * MiB], 201),
        "big": ("test/kmdbig:v1", [BIG_LAYER], 202),
    }
    return push_images(layout, PROXY, wanted)


def test_containers_run_as_kraken_and_become_healthy(docker_cluster: DockerCluster) -> None:
    """``docker ps`` on each host shows its one container healthy, its processes run as kraken."""
    expected = [(docker_cluster.herd, "kraken-herd"), *((a, "kraken-agent") for a in docker_cluster.agents)]
    t0 = time.monotonic()
    for host, name in expected:
        wait_until(lambda host=host, name=name: "(healthy)" in _ps(host.docker()).get(name, ""), 90, 0.5,
                   message=f"{name} on {host.name} to be healthy")
        assert list(_ps(host.docker())) == [name], _ps(host.docker())
        assert host.docker().run("exec", name, "id", "-un").stdout.strip() == "kraken"
        # Host networking: the container's network is the namespace's, i.e. the host's.
        assert host.docker().run("inspect", "-f", "{{.HostConfig.NetworkMode}}", name).stdout.strip() == "host"
    OBSERVED["all healthy after deploy"] = f"{time.monotonic() - t0:.1f}s"
    for agent in docker_cluster.agents:
        assert http_request(f"http://{agent.host.address}:16002/health").body.strip() == b"OK"
    assert http_request(f"http://{HERD_IP}:15003/health").body.strip() == b"OK"


def test_agent_hosts_pull_by_agent_address_and_mirror(docker_cluster: DockerCluster,
                                                      pushed: dict[str, Pushed]) -> None:
    """Each agent host's dockerd pulls from its agent, by address and as a Docker Hub name."""
    app = pushed["app"]
    for agent in docker_cluster.agents:
        seconds = pull_by_address_and_mirror(agent, app)
        OBSERVED[f"{agent.name} pull {AGENT_REGISTRY}/{app.ref}"] = f"{seconds:.2f}s"


def test_example_check_script_on_agent_host(docker_cluster: DockerCluster) -> None:
    agent = docker_cluster.agents[0]
    r = run_on(agent.host, [str(CHECKS / "test_multihost.sh"), HERD_IP, AGENT_REGISTRY], docker_cluster.env(agent))
    assert "PASS:" in r.stdout, r.stdout


def test_second_agent_takes_pieces_from_first(docker_cluster: DockerCluster, pushed: dict[str, Pushed]) -> None:
    """agent2 pulls the 24 MiB layer after agent1 completed it: agent1's host serves part of it."""
    big = pushed["big"]
    a1, a2 = docker_cluster.agents
    size = big.image.layer_sizes[0]
    ref = f"{AGENT_REGISTRY}/{big.ref}"
    before = {a.name: peer_and_origin_bytes(a) for a in (a1, a2)}

    def counted(agent: AgentHost) -> tuple[float, float] | None:
        """(from peers, from origins) since ``before``, once the agent counts the whole layer."""
        peer, origin = peer_and_origin_bytes(agent)
        delta = (peer - before[agent.name][0], origin - before[agent.name][1])
        return delta if sum(delta) >= size else None

    times = {}
    for agent in (a1, a2):
        t0 = time.monotonic()
        agent.docker().pull(ref)
        times[agent.name] = time.monotonic() - t0
        assert_image(agent, ref, big)
    # Counters are refreshed every stats interval (1 s).
    d1 = wait_until(lambda: counted(a1), 15, 0.2, message="agent1's metrics to count the big layer")
    d2 = wait_until(lambda: counted(a2), 15, 0.2, message="agent2's metrics to count the big layer")
    OBSERVED["big layer pull seconds"] = ", ".join(f"{n} {t:.2f}" for n, t in times.items())
    OBSERVED["big layer MiB from peers/origin"] = (f"agent1 {d1[0] / MiB:.1f}/{d1[1] / MiB:.1f}, "
                                                   f"agent2 {d2[0] / MiB:.1f}/{d2[1] / MiB:.1f}")
    assert d2[0] > 0, f"agent2 took nothing from agent1: {OBSERVED['big layer MiB from peers/origin']}"
    # ... over the network between the hosts: agent1's host address, as the tracker announced it.
    assert a1.host.address in _peers_connected(a2.docker(), "kraken-agent")


def test_stop_removes_containers(docker_cluster: DockerCluster) -> None:
    for agent in docker_cluster.agents:
        docker_cluster.agent_script(agent, "--stop")
        assert _ps(agent.docker()) == {}, _ps(agent.docker())
        with pytest.raises(OSError):  # connection refused: the agent is really gone
            http_request(f"http://{agent.host.address}:16002/health", timeout=5)
    docker_cluster.herd_script("--stop")
    assert _ps(docker_cluster.herd.docker()) == {}, _ps(docker_cluster.herd.docker())


# ---- devcluster, bridge network mode ----------------------------------------------------


@dataclass
class DevHost:
    host: NetnsHost
    dockerd: Dockerd
    workdir: Path

    def env(self) -> dict[str, str]:
        return _user_env(self.dockerd, {"KRAKEN_DEVCLUSTER": "docker", "KRAKEN_DOCKER_NETWORK": "bridge"})

    def devcluster(self, *args: str, check: bool = True, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
        return run_on(self.host, [sys.executable, "-m", "kraken.devcluster", *args, "--workdir", str(self.workdir)],
                       self.env(), timeout=timeout, check=check)

    def curl(self, url: str) -> str:
        """GET ``url`` from inside the namespace (where the published ports are)."""
        return run_on(self.host, ["curl", "-fsS", "--noproxy", "*", url], client_env(), timeout=30).stdout


@pytest.fixture(scope="module")
def dev_host(net: Network, kraken_images: None, dockerd: Dockerd) -> Iterator[DevHost]:
    """A namespace with its own dockerd (allowed to make bridge networks and publish ports
    there) holding the Kraken images; ``stop --docker`` and then a sweep on the way out."""
    host = net.add_host("dev", DEV_OCTET)
    d = Dockerd(netns=host.name, extra_config=BRIDGE_DAEMON_CONFIG)
    dev = DevHost(host, d, Path(tempfile.mkdtemp(prefix="kmd-devcluster-", dir="/tmp")))
    try:
        _start_daemons([d], dockerd)
        yield dev
    finally:
        try:
            if d.process is not None and d.process.alive():
                dev.devcluster("stop", "--docker", check=False)
                _remove_containers(d)
                d.run("network", "rm", "kraken", check=False)
        finally:
            d.stop()
            shutil.rmtree(dev.workdir, ignore_errors=True)


def _push(d: Dockerd, image: GeneratedImage, ref: str) -> str:
    """``docker push`` of a generated image; the digest docker reports (its own manifest)."""
    d.load_oci(image, ref)
    digest = d.push(ref)
    d.rmi(ref)
    return digest


def _pull(d: Dockerd, ref: str, image: GeneratedImage, digest: str) -> float:
    """``docker pull``, checked as a user would; how long it took."""
    t0 = time.monotonic()
    d.pull(ref)
    took = time.monotonic() - t0
    assert d.image_id(ref) == image.config_digest
    assert f"{ref.rsplit(':', 1)[0]}@{digest}" in d.repo_digests(ref), d.repo_digests(ref)
    d.rmi(ref)  # the next pull downloads every layer again
    return took


def test_devcluster_bridge_network(dev_host: DevHost, tmp_path: Path) -> None:
    """``KRAKEN_DOCKER_NETWORK=bridge``: push on :15000, pull on :16000 then :17000, stop."""
    d = dev_host.dockerd
    t0 = time.monotonic()
    r = dev_host.devcluster("start", timeout=300)
    OBSERVED["bridge devcluster start"] = f"{time.monotonic() - t0:.1f}s"
    assert "network   bridge (KRAKEN_DOCKER_NETWORK=bridge)" in r.stdout, r.stdout
    assert "ready: push through localhost:15000" in r.stdout, r.stdout
    addresses = {name: d.run("inspect", "-f", "{{(index .NetworkSettings.Networks \"kraken\").IPAddress}}",
                             name).stdout.strip()
                 for name in ("kraken-herd", "kraken-agent-one", "kraken-agent-two")}
    assert addresses == {"kraken-herd": "172.30.77.10", "kraken-agent-one": "172.30.77.11",
                         "kraken-agent-two": "172.30.77.12"}, addresses

    image = generate_oci_layout(tmp_path / "oci", "v1", [BIG_LAYER, 256 * 1024], seed=4242)
    digest = _push(d, image, "localhost:15000/test/bridge:v1")
    took = {port: _pull(d, f"localhost:{port}/test/bridge:v1", image, digest) for port in (16000, 17000)}
    OBSERVED["bridge pull seconds"] = ", ".join(f":{p} {t:.2f}" for p, t in took.items())

    def counted() -> tuple[float, float] | None:
        text = dev_host.curl("http://127.0.0.1:17002/metrics")
        peer = metric(text, "kraken_p2p_download_bytes_total", 0.0, source="peer")
        origin = metric(text, "kraken_p2p_download_bytes_total", 0.0, source="origin")
        # Layers up to download.small_blob_max come over HTTP from the origin, not P2P.
        wanted = image.p2p_layer_bytes(DownloadConfig().small_blob_max)
        return (peer, origin) if peer + origin >= wanted else None

    def seen() -> str:  # what the counters held when the wait gave up
        text = dev_host.curl("http://127.0.0.1:17002/metrics")
        return (f"wanted {image.p2p_layer_bytes(DownloadConfig().small_blob_max)} P2P bytes (layers "
                f"{image.layer_sizes}); " + "; ".join(
                    line for line in text.splitlines()
                    if line.startswith(("kraken_p2p_download_bytes_total", "kraken_agent_blob_fetches_total",
                                        "kraken_agent_small_blob_reads_total", "kraken_agent_http_fallbacks_total"))))

    peer, origin = wait_until(counted, 15, 0.2, message="agent-two's metrics to count the image's layers",
                              details=seen)
    OBSERVED["bridge agent-two MiB from peers/origin"] = f"{peer / MiB:.1f}/{origin / MiB:.1f}"
    assert peer > 0, f"agent-two took nothing from agent-one ({OBSERVED['bridge agent-two MiB from peers/origin']})"
    # The tracker announced agent-one at its address on the bridge network (nothing else reaches it).
    assert addresses["kraken-agent-one"] in _peers_connected(d, "kraken-agent-two")

    r = dev_host.devcluster("stop", "--docker")
    assert "stopping" in r.stdout, r.stdout
    assert d.run("ps", "-aq").stdout.split() == []
    assert d.run("network", "inspect", "kraken", check=False).returncode != 0, "the kraken network is left"
