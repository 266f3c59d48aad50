"""The client-facing registries over TLS, with real clients: a herd whose proxy (:15000) and
agent registry (:16000) serve HTTPS (every internal hop on mTLS too), a real dockerd that
trusts the cluster CA through ``certs.d/<host:port>/ca.crt``, and skopeo with
``--dest-cert-dir``/``--src-cert-dir``.

dockerd treats 127.0.0.0/8 as insecure: there it skips certificate verification and falls
back to plain HTTP, and never reads ``certs.d``. So dockerd talks to the herd on this host's
non-loopback address, a secure registry to it: HTTPS only, verified against ``certs.d``. That
the CA is really what lets the push through is shown first, by the push failing without it.
The ports serve HTTPS only, so every request a client got an answer to went over TLS.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Herd, start_herd
from tests.support.docker import Dockerd
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.pki import Pki, make_pki
from tests.support.process import ClientError
from tests.support.registry_http import MANIFEST_ACCEPT, sha256_bytes
from tests.support.skopeo import Skopeo

MiB = 1024 * 1024
REPO = "tls/registry"
ALL = ("testfs", "origin", "tracker", "build-index", "proxy", "agent")


def host_address() -> str | None:
    """This host's first global IPv4 address (not loopback), or None."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True,
                         text=True, check=False).stdout
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    return None


@pytest.fixture(scope="module")
def address() -> str:
    found = host_address()
    if found is None:
        pytest.skip("no non-loopback IPv4 address: dockerd verifies no registry on 127.0.0.0/8")
    if shutil.which("dockerd") is None or shutil.which("unshare") is None:
        pytest.skip("dockerd and unshare are needed")
    return found


@pytest.fixture(scope="module")
def pki(address: str, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), server_ips=[address])


@pytest.fixture(scope="module")
def herd(pki: Pki, address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    everywhere = {"host": "0.0.0.0"}
    overrides = {name: {"tls": pki.section()} for name in ALL}
    overrides["proxy"]["listen"] = everywhere
    overrides["agent"]["listen"] = everywhere
    # dockerd reaches the agent at this host's own non-loopback address: allow it (the
    # default allow-list is loopback and the Docker bridge).
    overrides["agent"]["allowed_cidrs"] = ["127.0.0.0/8", f"{address}/32"]
    h = start_herd(Path(tmp_path_factory.mktemp("herd")), agents=1, overrides=overrides,
                   probe_tls={name: pki.probe() for name in ALL})
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    return generate_oci_layout(tmp_path_factory.mktemp("oci"), "v1", [3 * MiB, 1 * MiB], seed=20261111)


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs.d")


@pytest.fixture(scope="module")
def tls_dockerd(address: str, certs_dir: Path) -> Iterator[Dockerd]:
    d = Dockerd(certs_dir=certs_dir, no_proxy=[address])
    try:
        d.start()
        yield d
    finally:
        d.stop()


def https_get(pki: Pki, url: str) -> bytes:
    """GET over HTTPS trusting the cluster CA only, with no proxy and no client certificate."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=pki.context(None)))
    with opener.open(urllib.request.Request(url, headers={"Accept": MANIFEST_ACCEPT}), timeout=60) as resp:
        return bytes(resp.read())


def trust(certs_dir: Path, host: str, pki: Pki) -> None:
    """What an operator does: the CA as ``certs.d/<host:port>/ca.crt``."""
    (certs_dir / host).mkdir(exist_ok=True)
    shutil.copy(pki["ca.pem"], certs_dir / host / "ca.crt")


def test_dockerd_pushes_to_the_proxy_and_pulls_from_the_agent_over_tls(
    tls_dockerd: Dockerd, herd: Herd, pki: Pki, image: GeneratedImage, address: str, certs_dir: Path,
) -> None:
    proxy = f"{address}:{herd.proxy.port}"
    agent = f"{address}:{herd.agents[0].port}"
    pushed, pulled = f"{proxy}/{REPO}:1", f"{agent}/{REPO}:1"
    tls_dockerd.load_oci(image, "local/tls-src:1")
    tls_dockerd.tag("local/tls-src:1", pushed)
    try:
        with pytest.raises(ClientError) as untrusted:
            tls_dockerd.push(pushed)
        assert "x509" in str(untrusted.value) or "certificate" in str(untrusted.value)

        trust(certs_dir, proxy, pki)
        digest = tls_dockerd.push(pushed)
        manifest = https_get(pki, f"https://{proxy}/v2/{REPO}/manifests/1")
        assert sha256_bytes(manifest) == digest
        assert https_get(pki, f"https://{agent}/v2/{REPO}/manifests/1") == manifest
        for layer in json.loads(manifest)["layers"]:
            blob = https_get(pki, f"https://{agent}/v2/{REPO}/blobs/{layer['digest']}")
            assert sha256_bytes(blob) == layer["digest"]

        trust(certs_dir, agent, pki)
        tls_dockerd.rmi(pushed)
        tls_dockerd.pull(pulled)
        assert tls_dockerd.image_id(pulled) == image.config_digest
        assert f"{agent}/{REPO}@{digest}" in tls_dockerd.repo_digests(pulled)
    finally:
        tls_dockerd.rmi(pushed, pulled, "local/tls-src:1")
    assert "refused: no client certificate" not in herd.agents[0].log_path.read_text(errors="replace")


def test_skopeo_with_cert_dirs(herd: Herd, pki: Pki, image: GeneratedImage, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    shutil.copy(pki["ca.pem"], ca_dir / "ca.crt")
    pushed = f"docker://127.0.0.1:{herd.proxy.port}/{REPO}:skopeo"
    pulled = f"docker://127.0.0.1:{herd.agents[0].port}/{REPO}:skopeo"
    with Skopeo() as sk:
        with pytest.raises(ClientError) as untrusted:
            sk.copy(image.oci_ref, pushed, tls_verify=True)
        assert "certificate" in str(untrusted.value)
        sk.copy(image.oci_ref, pushed, tls_verify=True, extra_args=["--dest-cert-dir", str(ca_dir)])
        sk.copy(pulled, f"dir:{tmp_path / 'out'}", tls_verify=True, extra_args=["--src-cert-dir", str(ca_dir)])
    out = tmp_path / "out"
    assert (out / "manifest.json").read_bytes() == image.manifest
    for digest in image.layer_digests:
        assert sha256_bytes((out / digest.split(":", 1)[1]).read_bytes()) == digest
