"""``make devcluster`` in Docker, end to end, the way the codelab runs it.

The base image is built from Debian packages alone (``make base-image``: no public image
registry is reachable here), the images from wheels made on this host (``make images``), and
``make devcluster`` finds the daemon by itself and starts ``kraken-herd``,
``kraken-agent-one`` and ``kraken-agent-two`` on the seed's ports with host networking. A real
``docker push`` to :15000, ``docker pull`` from :16000 and then from :17000 (agent-two takes
pieces from agent-one), and ``make docker_stop`` removes everything.

``KRAKEN_TLS=1 make devcluster`` does the same with every hop on TLS and mTLS: the
certificates made on the host and mounted into the containers (the CA's key stays out), the
configs the native mode writes, the containers' health checks on HTTPS with the client
certificate, the internal ports refusing a client without it, and the same push and P2P pulls.

The daemon is the suite's private dockerd; the containers listen on the devcluster's fixed
host ports, so the test skips, naming them, when one is taken (a developer's devcluster).
"""
from __future__ import annotations

import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from kraken.agent.config import DownloadConfig
from kraken.devcluster import REPO_ROOT, port_free
from kraken.devcluster.docker import IMAGE_TLS_DIR
from kraken.devcluster.tls import DevPki
from tests.support.docker import Dockerd
from tests.support.kraken_images import make
from tests.support.metrics import metric
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.waiting import wait_until

pytestmark = pytest.mark.realclients

CONTAINERS = ("kraken-herd", "kraken-agent-one", "kraken-agent-two")
HOST_PORTS = [14000, 14001, 15000, 15001, 15002, 15003, 15004, 16000, 16001, 16002, 17000, 17001, 17002]
MB = 1 << 20


def test_base_image_is_debian_with_python_and_redis(kraken_images: None, dockerd: Dockerd) -> None:
    r = dockerd.run("run", "--rm", "--network", "none", "kraken-base:bookworm", "sh", "-c",
                    "python3 -c 'import sys, venv; print(sys.version_info[:2])' && redis-server --version "
                    "&& . /etc/os-release && echo $VERSION_CODENAME")
    assert "(3, 11)" in r.stdout and "Redis server v=7" in r.stdout and "bookworm" in r.stdout, r.stdout


def test_images_run_unprivileged_with_health_checks(kraken_images: None, dockerd: Dockerd) -> None:
    for name in ("kraken-herd:dev", "kraken-agent:dev"):
        config = dockerd.inspect_image(name)["Config"]
        assert config["User"] == "kraken", config
        assert "kraken.devcluster" in " ".join(config["Healthcheck"]["Test"]), config["Healthcheck"]
    # Installed without the network: the project and its compiled dependencies import.
    r = dockerd.run("run", "--rm", "--network", "none", "--entrypoint", "python", "kraken-agent:dev", "-c",
                    "import os, kraken.agent, libtorrent, aiohttp, redis; print(os.getuid(), libtorrent.__version__)")
    assert r.stdout.split()[0] == "10001", r.stdout


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _health(dockerd: Dockerd) -> dict[str, str]:
    r = dockerd.run("ps", "--filter", "name=kraken", "--format", "{{.Names}} {{.Status}}")
    return {line.split()[0]: line for line in r.stdout.splitlines()}


def _skip_if_ports_busy() -> None:
    busy = [p for p in HOST_PORTS if not port_free(p)]
    if busy:
        pytest.skip(f"the devcluster's fixed ports are in use: {busy} (a devcluster running? make devcluster-stop)")


@pytest.fixture
def devcluster(kraken_images: None, docker_env: dict[str, str]) -> Iterator[subprocess.CompletedProcess[str]]:
    _skip_if_ports_busy()
    try:
        yield make(docker_env, "devcluster", timeout=300)
    finally:
        subprocess.run(["make", "docker_stop"], cwd=REPO_ROOT, env=docker_env, capture_output=True, timeout=120)


@pytest.fixture
def tls_env(docker_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """``KRAKEN_TLS=1``, and a work dir of the test's own (its ``tls/`` holds the certificates)."""
    return {**docker_env, "KRAKEN_TLS": "1", "DEVCLUSTER_DIR": str(tmp_path / "dc")}


@pytest.fixture
def devcluster_tls(kraken_images: None, tls_env: dict[str, str]) -> Iterator[subprocess.CompletedProcess[str]]:
    _skip_if_ports_busy()
    try:
        yield make(tls_env, "devcluster", timeout=300)
    finally:
        subprocess.run(["make", "docker_stop"], cwd=REPO_ROOT, env=tls_env, capture_output=True, timeout=120)


def _push(dockerd: Dockerd, tmp_path: Path) -> tuple[GeneratedImage, str]:
    image = generate_oci_layout(tmp_path / "oci", "v1", [24 * MB, 256 * 1024], seed=4040)
    dockerd.load_oci(image, "localhost:15000/test/codelab:v1")
    digest = dockerd.push("localhost:15000/test/codelab:v1")
    dockerd.rmi("localhost:15000/test/codelab:v1")
    return image, digest


def _pull(dockerd: Dockerd, ref: str, image: GeneratedImage, digest: str) -> None:
    dockerd.pull(ref)
    assert dockerd.image_id(ref) == image.config_digest
    assert f"{ref.rsplit(':', 1)[0]}@{digest}" in dockerd.repo_digests(ref)
    dockerd.rmi(ref)  # the next pull downloads every layer again


def test_devcluster_in_docker_push_pull_stop(devcluster: subprocess.CompletedProcess[str], dockerd: Dockerd,
                                              docker_env: dict[str, str], tmp_path: Path) -> None:
    out = devcluster.stdout
    assert "kraken devcluster: Docker containers (a Docker daemon answers" in out, out
    assert "network   host" in out and "ready: push through localhost:15000" in out, out
    wait_until(lambda: all("(healthy)" in _health(dockerd).get(c, "") for c in CONTAINERS), 90,
               message=f"{CONTAINERS} to be healthy")
    for name in CONTAINERS:
        assert dockerd.run("exec", name, "id", "-u").stdout.strip() == "10001"

    image, digest = _push(dockerd, tmp_path)  # docker pushes a Docker v2 manifest: its own digest
    _pull(dockerd, "localhost:16000/test/codelab:v1", image, digest)
    _pull(dockerd, "localhost:17000/test/codelab:v1", image, digest)

    # P2P: agent-two downloaded the layers over BitTorrent (from agent-one and the origin, both
    # seeding it by then), and its log (docker logs) has the "Torrent complete" lines the
    # codelab greps for. Layers up to download.small_blob_max, the manifest and the config
    # come over HTTP from the origin. Which seed sends the 24 MB layer on loopback is a race
    # the origin often wins outright; agents trading pieces is asserted where uploads are
    # capped (tests/cluster/test_agent_swarm.py, the multi-host tests).
    wanted = image.p2p_layer_bytes(DownloadConfig().small_blob_max)

    def counted() -> bool:  # the counters refresh every stats interval
        metrics = _metrics(17002)
        return sum(metric(metrics, "kraken_p2p_download_bytes_total", 0.0, source=s)
                   for s in ("peer", "origin")) >= wanted

    wait_until(counted, 15, 0.2, message=f"agent-two's P2P counters to reach the layers' {wanted} bytes",
               details=lambda: _metrics(17002))
    log = dockerd.run("logs", "kraken-agent-two").stdout
    completes = [dict(f.split("=", 1) for f in line.split() if "=" in f)
                 for line in log.splitlines() if " Torrent complete " in line]
    # The big layer (docker re-compressed it on push: its digest is docker's) came partly from agent-one.
    assert any(int(c["size"]) > 20 * MB and int(c["from_peers"]) > 0 for c in completes), log[-3000:]
    herd_log = dockerd.run("logs", "kraken-herd").stdout
    assert "/v2/test/codelab/manifests/v1" in herd_log and "Redis version" in herd_log, herd_log[-3000:]
    # The herd's tracker keeps its swarms in the herd's redis-server.
    keys = dockerd.run("exec", "kraken-herd", "redis-cli", "-p", "14001", "--scan", "--pattern", "kraken:tracker:*")
    assert keys.stdout.split(), "no tracker keys in the herd's redis"

    stop = make(docker_env, "docker_stop").stdout
    assert "stopping" in stop, stop
    assert not _health(dockerd), _health(dockerd)
    wait_until(lambda: all(port_free(p) for p in HOST_PORTS), 10, message="the devcluster's ports to be free")


def _status(tls_dir: Path, url: str, *, cert: bool) -> int:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls_dir / "ca.pem"))
    if cert:
        ctx.load_cert_chain(tls_dir / "client.pem", tls_dir / "client-key.pem")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(url, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def _sans(path: Path) -> set[str]:
    ext = x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)}


def test_devcluster_in_docker_with_tls_on_every_hop(devcluster_tls: subprocess.CompletedProcess[str],
                                                    dockerd: Dockerd, tls_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    out = devcluster_tls.stdout
    tls_dir = Path(tls_env["DEVCLUSTER_DIR"]) / "tls"
    assert "kraken devcluster: Docker containers (a Docker daemon answers" in out, out
    assert f"tls       {tls_dir}: made ca.pem" in out and "ready: push through localhost:15000" in out, out
    # The server certificates name what is dialled: loopback (host networking) and the containers.
    assert {"tracker", "localhost", "127.0.0.1", *CONTAINERS} <= _sans(tls_dir / "tracker.pem")
    # The containers' health checks probe the HTTPS servers with the CA and client certificate.
    wait_until(lambda: all("(healthy)" in _health(dockerd).get(c, "") for c in CONTAINERS), 90,
               message=f"{CONTAINERS} to be healthy")

    # Every file but the CA's key is in each container, read-only, readable by its processes.
    for name in CONTAINERS:
        listed = dockerd.run("exec", name, "ls", "/etc/kraken/tls").stdout.split()
        assert "ca.pem" in listed and "client-key.pem" in listed and "ca-key.pem" not in listed, listed
        assert dockerd.run("exec", name, "head", "-c1", "/etc/kraken/tls/origin-key.pem").stdout == "-"
        touch = dockerd.run("exec", "-u", "0", name, "touch", "/etc/kraken/tls/ca.pem", check=False)
        assert touch.returncode != 0 and "Read-only" in touch.stderr, touch.stderr
    # The supervisors inside wrote the native mode's tls: sections, with the mounted files.
    inside = DevPki(Path(IMAGE_TLS_DIR))
    herd_cfg = yaml.safe_load(dockerd.run("exec", "kraken-herd", "cat",
                                          "/var/cache/kraken/herd/config/origin.yaml").stdout)
    assert herd_cfg["tls"] == inside.overrides()["origin"]["tls"], herd_cfg
    agent_cfg = yaml.safe_load(dockerd.run("exec", "kraken-agent-one", "cat",
                                           "/var/cache/kraken/agent/config/agent.yaml").stdout)
    assert agent_cfg["tls"] == inside.overrides()["agent"]["tls"], agent_cfg

    # The herd's internal servers are HTTPS and want the cluster's client certificate.
    for port in (14000, 15002, 15004):
        assert _status(tls_dir, f"https://127.0.0.1:{port}/metrics", cert=True) == 200, port
        assert _status(tls_dir, f"https://127.0.0.1:{port}/metrics", cert=False) == 403, port
    assert "refused: no client certificate" in dockerd.run("logs", "kraken-herd").stdout

    # The registries stay plain HTTP, as in the native mode: the same push and P2P pulls.
    image, digest = _push(dockerd, tmp_path)
    _pull(dockerd, "localhost:16000/test/codelab:v1", image, digest)
    _pull(dockerd, "localhost:17000/test/codelab:v1", image, digest)
    assert metric(_metrics(17002), "kraken_p2p_download_bytes_total", 0.0, source="peer") > 0
    for name in CONTAINERS:  # origin and agents announced to the HTTPS tracker, verifying it
        log = dockerd.run("logs", name)
        assert "tracker error" not in log.stdout + log.stderr, name

    stop = make(tls_env, "docker_stop").stdout
    assert "stopping" in stop, stop
    wait_until(lambda: all(port_free(p) for p in HOST_PORTS), 10, message="the devcluster's ports to be free")
