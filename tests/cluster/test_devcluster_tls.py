"""``python -m kraken.devcluster start --tls``: the real command, every hop on TLS and mTLS.

On shifted ports (a copy of examples/devcluster's parameter files, as in test_devcluster),
with the checked-in development configs extended only by smaller pieces (so agent-two takes
some from agent-one). The image is pushed through the proxy (plain HTTP, client-facing) and
pulled through both agents with skopeo; the origin, tracker, build-index and testfs serve
HTTPS and refuse a client without the cluster's certificate. ``devcluster health`` probes
them with the certificates the state file names.
"""
from __future__ import annotations

import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kraken.devcluster import REPO_ROOT, write_overlay
from kraken.devcluster.params import CONFIG_ROOT, AgentPorts, HerdPorts
from tests.support.devcluster import EXIT_TIMEOUT, READY_TIMEOUT, Devcluster, devcluster_env, params_with_free_ports
from tests.support.metrics import metric
from tests.support.ocigen import generate_oci_layout
from tests.support.skopeo import assert_dir_matches_image, skopeo_copy, skopeo_pull_dir

pytestmark = pytest.mark.realclients

MiB = 1 << 20


def small_pieces_configs(tmp_path: Path) -> Path:
    """config/<component>/development.yaml, the origin's with 256 KiB pieces."""
    root = tmp_path / "config"
    for component in ("testfs", "origin", "tracker", "build-index", "proxy", "agent"):
        extra = {"metainfo": {"piece_lengths": {0: "256KB"}}} if component == "origin" else {}
        write_overlay(root / component / "development.yaml", CONFIG_ROOT / component / "development.yaml", extra)
    return root


def opener(tls_dir: Path, cert: bool) -> urllib.request.OpenerDirector:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls_dir / "ca.pem"))
    if cert:
        ctx.load_cert_chain(tls_dir / "client.pem", tls_dir / "client-key.pem")
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))


def status(op: urllib.request.OpenerDirector, url: str) -> int:
    try:
        with op.open(url, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_start_tls_push_and_p2p_pull_with_every_hop_on_tls(tmp_path: Path) -> None:
    params, _ = params_with_free_ports(tmp_path)
    herd = HerdPorts.from_params(params / "herd_param.sh")
    agents = [AgentPorts.from_params(params / f"agent_{n}_param.sh") for n in ("one", "two")]
    workdir = tmp_path / "dc"
    dc = Devcluster(workdir, "--tls", "--herd-params", str(params / "herd_param.sh"),
                    "--config-dir", str(small_pieces_configs(tmp_path)))
    try:
        dc.wait_for_line("ready:", READY_TIMEOUT)
        tls_dir = workdir / "tls"
        for name in ("ca.pem", "client.pem", "client-key.pem", "origin.pem", "origin-key.pem", "tracker.pem"):
            assert (tls_dir / name).is_file(), name
        assert f"https://127.0.0.1:{herd.origin}/health" in dc.output, dc.output
        assert f"http://127.0.0.1:{herd.proxy}/v2/" in dc.output, dc.output

        health = subprocess.run(
            [sys.executable, "-m", "kraken.devcluster", "health", "--workdir", str(workdir)],
            env=devcluster_env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT,
            check=False,
        )
        assert health.returncode == 0, health.stderr

        # Internal endpoints: the cluster's certificate gets in, none is refused.
        with_cert, without = opener(tls_dir, True), opener(tls_dir, False)
        for port in (herd.origin, herd.build_index, herd.testfs):
            assert status(with_cert, f"https://127.0.0.1:{port}/metrics") == 200
            assert status(without, f"https://127.0.0.1:{port}/metrics") == 403
        assert "refused: no client certificate" in (workdir / "logs" / "origin.log").read_text()

        image = generate_oci_layout(tmp_path / "oci", "v1", [6 * MiB, 64 * 1024], seed=11)
        skopeo_copy(image.oci_ref, f"docker://127.0.0.1:{herd.proxy}/tls/dev:1")
        for i, agent in enumerate(agents):
            pulled = skopeo_pull_dir(f"docker://127.0.0.1:{agent.registry}/tls/dev:1", tmp_path / f"pulled-{i}")
            assert_dir_matches_image(pulled, image)

        with urllib.request.urlopen(f"http://127.0.0.1:{agents[1].server}/metrics", timeout=30) as r:
            text = r.read().decode()
        assert metric(text, "kraken_p2p_download_bytes_total", 0.0, source="peer") > 0, text
        for name in ("agent-one", "agent-two", "origin"):
            assert "tracker error" not in (workdir / "logs" / f"{name}.log").read_text(), name

        # A restart keeps the certificates.
        ca = (tls_dir / "ca.pem").read_bytes()
        dc.proc.terminate()
        assert dc.wait_exit() == 0, dc.output
        again = Devcluster(workdir, "--tls", "--herd-params", str(params / "herd_param.sh"),
                           "--config-dir", str(small_pieces_configs(tmp_path)))
        try:
            again.wait_for_line("ready:", READY_TIMEOUT)
            assert "certificates reused" in again.output, again.output
            assert (tls_dir / "ca.pem").read_bytes() == ca
        finally:
            again.cleanup()
    finally:
        dc.cleanup()
