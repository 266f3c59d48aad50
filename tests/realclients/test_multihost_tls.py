"""The multi-host deployment with TLS, deployed across network namespaces with the guide's commands.

Why: ``examples/multihost/README.md`` tells operators to make a development PKI naming the
herd's address (``python -m kraken.devcluster tls --out DIR --hosts ...``), copy it to every
host and deploy with ``--tls-dir DIR``. Only separate hosts show that the certificates name
what other hosts dial (an ``IP:`` SAN for the herd's address, checked by Python and by
libtorrent's announces), that agents work from a copy without the CA's key, and that the herd's
internal ports really speak only TLS to the rest of the network.

What the test checks, as an operator would:

* ``deploy_herd.sh`` and two ``deploy_agent.sh --tls-dir`` come up (each agent host has its own
  copy of ``ca.pem``, the client pair and the peer pair only);
* skopeo pushes through the herd's proxy (plain HTTP, as the guide says) and pulls from each
  agent: same manifest and blob bytes, and the agents' P2P counters show the layer came over
  BitTorrent (the tracker announces went over HTTPS);
* from an agent host: plain HTTP to origin, tracker and build-index gets no HTTP answer at all;
  HTTPS without a client certificate gets 403 (a tag write too, which leaves the tag alone), with
  a certificate from another CA the handshake fails, with the cluster's certificate it works;
  testfs is not reachable from another host;
* the scripts refuse, before starting anything, a herd directory whose certificates do not name
  the herd's address, an agent whose CA does not accept the herd's, and a plain-HTTP agent
  for a TLS herd;
* the guide's check script (``test_multihost.sh``) passes on an agent host.

Every resource is named ``kmt-`` / lives on 10.203.0.0/24 and is removed in ``finally`` blocks.
"""
from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.multihost import (
    CHECKS,
    SCRIPTS,
    AgentHost,
    MiB,
    Pushed,
    peer_and_origin_bytes,
    push_images,
    run_on,
    skip_reason,
)
from tests.support.netns import NetnsHost, Network
from tests.support.process import NO_PROXY_HOSTS, client_env, kill_pid, pids_mentioning
from tests.support.skopeo import assert_dir_matches_image, skopeo_pull_dir
from tests.support.waiting import wait_until

pytestmark = pytest.mark.realclients

SUBNET = "10.203.0"
HERD_IP = f"{SUBNET}.1"
PROXY = f"{HERD_IP}:15000"
#: The herd's ports that speak TLS to other hosts (origin, tracker, build-index).
INTERNAL_PORTS = (15002, 15003, 15004)
LAYER = 8 * MiB
#: What an agent host needs of the PKI: no server key, no CA key.
AGENT_FILES = ("ca.pem", "client.pem", "client-key.pem", "peer.pem", "peer-key.pem")
#: An address no certificate of the cluster's PKI names.
STRANGER = f"{SUBNET}.99"


@dataclass
class TlsCluster:
    net: Network
    herd: NetnsHost
    base: Path
    agents: list[AgentHost] = field(default_factory=list)

    @property
    def pki(self) -> Path:
        """The directory the PKI was made in (the herd's copy: it holds ``ca-key.pem``)."""
        return self.base / "tls"

    def script_env(self, home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return client_env({"KRAKEN_HOME": str(home), "KRAKEN_PYTHON": sys.executable, **(extra or {})})


def _curl(host: NetnsHost, url: str, *args: str) -> tuple[int, str, str]:
    """``curl`` from ``host``: (exit code, HTTP status or "000" when none came, body)."""
    r = run_on(host, ["curl", "-sS", "--noproxy", "*", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}",
                      *args, url], client_env(), timeout=60, check=False)
    body, _, status = r.stdout.rpartition("\n")
    return r.returncode, status.strip(), body


@pytest.fixture(scope="module")
def cluster() -> Iterator[TlsCluster]:
    """Bridge + herd + two agent hosts, deployed with ``--tls-dir`` as the guide says."""
    reason = skip_reason("skopeo", "curl")
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="kmt-", dir="/tmp"))
    net = Network("kmt-", SUBNET)
    assert net.cidr in NO_PROXY_HOSTS, NO_PROXY_HOSTS
    c: TlsCluster | None = None
    try:
        net.create()
        c = TlsCluster(net, net.add_host("herd", 1), base)
        for i in (1, 2):
            c.agents.append(AgentHost(net.add_host(f"agent{i}", i + 1), base / f"agent{i}"))
        hosts = ",".join([HERD_IP, *(a.host.address for a in c.agents)])
        r = subprocess.run([sys.executable, "-m", "kraken.devcluster", "tls", "--out", str(c.pki), "--hosts", hosts],
                           capture_output=True, text=True, check=True, timeout=120)
        assert "made ca.pem" in r.stdout, r.stdout
        r = run_on(c.herd, [str(SCRIPTS / "deploy_herd.sh"), HERD_IP, "--native", "--tls-dir", str(c.pki)],
                   c.script_env(base / "herd", {"BIND_ADDRESS": HERD_IP}))
        assert f"herd up on {HERD_IP} (native)" in r.stdout, r.stdout
        for agent in c.agents:
            # An agent host gets the CA and the client pair only (the guide's scp line).
            copy = agent.home / "tls"
            copy.mkdir(parents=True)
            for name in AGENT_FILES:
                shutil.copy2(c.pki / name, copy / name)
            r = run_on(agent.host, [str(SCRIPTS / "deploy_agent.sh"), HERD_IP, agent.host.address, "--native",
                                    "--tls-dir", str(copy)], c.script_env(agent.home))
            assert f"agent up on {agent.host.address}" in r.stdout, r.stdout
        yield c
    finally:
        try:
            if c is not None:
                for agent in c.agents:
                    run_on(agent.host, [str(SCRIPTS / "deploy_agent.sh"), "--stop"], c.script_env(agent.home),
                           check=False)
                run_on(c.herd, [str(SCRIPTS / "deploy_herd.sh"), "--stop"], c.script_env(base / "herd"),
                       check=False)
            for pid in pids_mentioning(str(base)):  # anything --stop left behind
                kill_pid(pid)
        finally:
            problems = net.destroy()
            shutil.rmtree(base, ignore_errors=True)
            assert not problems, f"cleanup left: {problems}"


@pytest.fixture(scope="module")
def pushed(cluster: TlsCluster, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    layout = tmp_path_factory.mktemp("kmt-oci") / "oci"
    return push_images(layout, PROXY, {"app": ("company/tlsapp:v1", [LAYER, 1 * MiB], 201)})["app"]


def test_agents_pull_over_p2p_from_a_tls_herd(cluster: TlsCluster, pushed: Pushed, tmp_path: Path) -> None:
    """Both agents serve the pushed image byte for byte; the layer came over P2P."""
    before = {a.name: sum(peer_and_origin_bytes(a)) for a in cluster.agents}

    def pull(agent: AgentHost) -> Path:
        return skopeo_pull_dir(f"docker://{agent.host.address}:16000/{pushed.ref}", tmp_path / agent.name)

    with concurrent.futures.ThreadPoolExecutor(len(cluster.agents)) as pool:
        pulled = list(pool.map(pull, cluster.agents))
    for path in pulled:
        assert_dir_matches_image(path, pushed.image)

    size = sum(pushed.image.layer_sizes)

    def p2p_counted() -> dict[str, float] | None:
        delta = {a.name: sum(peer_and_origin_bytes(a)) - before[a.name] for a in cluster.agents}
        return delta if all(d >= size for d in delta.values()) else None

    # The counters refresh every stats interval: wait until each agent has counted every layer.
    wait_until(p2p_counted, 15, 0.2, message="each agent's P2P counters to count the image's layers")


def test_internal_ports_speak_only_tls(cluster: TlsCluster, pushed: Pushed) -> None:
    """From another host: no plain HTTP, no request without the cluster's client certificate."""
    agent = cluster.agents[0].host
    ca = str(cluster.agents[0].home / "tls" / "ca.pem")
    mine = ["--cacert", ca, "--cert", str(cluster.pki / "client.pem"), "--key", str(cluster.pki / "client-key.pem")]
    for port in INTERNAL_PORTS:
        rc, status, body = _curl(agent, f"http://{HERD_IP}:{port}/health")
        assert rc != 0 and status == "000", f"plain HTTP to {port} got an answer: {status} {body}"
        # /health is open to probes over HTTPS; the certificate names the herd's address.
        assert _curl(agent, f"https://{HERD_IP}:{port}/health", "--cacert", ca)[:2] == (0, "200")
        rc, status, body = _curl(agent, f"https://{HERD_IP}:{port}/metrics", "--cacert", ca)
        assert status == "403" and "client certificate" in body, f"{port} /metrics without a certificate: {status}"

    tag_url = f"https://{HERD_IP}:15004/tags/{pushed.ref.replace('/', '%2F')}"
    rc, status, body = _curl(agent, tag_url, "--cacert", ca)
    assert status == "403" and "client certificate" in body, f"tag read without a certificate: {status} {body}"
    rc, status, body = _curl(agent, f"{tag_url}/digest/sha256:{'0' * 64}", "--cacert", ca, "-X", "PUT")
    assert status == "403", f"tag move without a certificate: {status} {body}"
    assert _curl(agent, tag_url, *mine)[1:] == ("200", pushed.digest)

    origin = f"https://{HERD_IP}:15002"
    for args in (["-X", "POST", f"{origin}/forcecleanup"],
                 [f"{origin}/internal/namespace/company%2Ftlsapp/blobs/{pushed.image.layer_digests[0]}"],
                 [f"https://{HERD_IP}:15003/namespace/company%2Ftlsapp/blobs/{pushed.image.layer_digests[0]}/metainfo"]):
        rc, status, body = _curl(agent, args[-1], "--cacert", ca, *args[:-1])
        assert status == "403" and "client certificate" in body, f"{args}: {status} {body}"
    # Announces need a certificate too (the hosts' announce relays present theirs): a
    # well-formed leecher announce without one is refused, with one it is answered.
    announce = f"https://{HERD_IP}:15003/announce?info_hash={'%41' * 20}&peer_id={'%42' * 20}&port=6881&left=1"
    rc, status, body = _curl(agent, announce, "--cacert", ca)
    assert status == "403" and "certificate" in body, f"announce without a certificate: {status} {body}"
    assert _curl(agent, announce, *mine)[1] == "200"

    # A client certificate from another CA fails the handshake; nothing answers.
    other = cluster.base / "other-ca"
    subprocess.run([sys.executable, "-m", "kraken.devcluster", "tls", "--out", str(other), "--hosts", STRANGER],
                   capture_output=True, check=True, timeout=120)
    rc, status, _ = _curl(agent, tag_url, "--cacert", ca, "--cert", str(other / "client.pem"),
                          "--key", str(other / "client-key.pem"))
    assert rc != 0 and status == "000", f"a foreign client certificate got {status}"
    # ... and a client trusting only another CA refuses the herd's servers (curl 7.88 with
    # OpenSSL 3 says 35 for a signature that does not verify, 60 for an unknown issuer).
    rc, status, _ = _curl(agent, f"https://{HERD_IP}:15004/health", "--cacert", str(other / "ca.pem"))
    assert rc in (35, 60) and status == "000", f"a client trusting another CA got {rc} {status}"

    # testfs and redis are the herd's own: not reachable from another host at all.
    for port in (14000, 14001):
        assert _curl(agent, f"https://{HERD_IP}:{port}/health", *mine)[0] == 7, f"{port} answers other hosts"


def test_scripts_refuse_mismatched_certificates(cluster: TlsCluster) -> None:
    """The deploy scripts say what is wrong with the certificates before they start anything."""
    other = cluster.base / "other-ca"  # named for STRANGER only (made by the test above)
    if not other.is_dir():
        subprocess.run([sys.executable, "-m", "kraken.devcluster", "tls", "--out", str(other), "--hosts", STRANGER],
                       capture_output=True, check=True, timeout=120)
    scratch = cluster.base / "scratch"
    r = run_on(cluster.herd, [str(SCRIPTS / "deploy_herd.sh"), HERD_IP, "--native", "--tls-dir", str(other)],
               cluster.script_env(scratch / "herd", {"BIND_ADDRESS": HERD_IP}), check=False)
    assert r.returncode != 0 and f"do not name {HERD_IP}" in r.stderr, r.stderr
    agent = cluster.agents[1]
    cases = {"no TLS connection to the herd's tracker": ["--tls-dir", str(other)],
             "does not speak plain HTTP: the herd runs with TLS": []}
    for message, args in cases.items():
        r = run_on(agent.host, [str(SCRIPTS / "deploy_agent.sh"), HERD_IP, agent.host.address, "--native", *args],
                   cluster.script_env(scratch / "agent"), check=False)
        assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not (scratch / "herd" / "herd.pid").exists() and not (scratch / "agent" / "agent.pid").exists()
    # The running agent was left alone.
    assert _curl(agent.host, "http://127.0.0.1:16002/health")[1] == "200"


def test_guide_check_script_on_an_agent_host(cluster: TlsCluster) -> None:
    """test_multihost.sh, as the guide's "Check it" runs it on an agent host."""
    agent = cluster.agents[0]
    r = run_on(agent.host, [str(CHECKS / "test_multihost.sh"), HERD_IP, "127.0.0.1:16000"],
               cluster.script_env(agent.home))
    assert "PASS:" in r.stdout, r.stdout
