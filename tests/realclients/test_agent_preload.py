"""``POST /preload/tags/<repo>:<tag>?runtime=...``: the agent has this host's runtime pull an
image through it, with a real dockerd (Engine API on its socket) and a real containerd (ctr).

The herd and one agent are real processes; the agent is pointed at the test's dockerd and
containerd sockets. After the call, the runtime holds the image under the agent's name, with
the pushed config (docker's image id) or manifest digest (containerd), and the agent's access
log shows the runtime's pulls.
"""
from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Herd, start_herd
from tests.support.containerd import Containerd
from tests.support.docker import Dockerd
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.registry_http import fetch_manifest
from tests.support.skopeo import skopeo_copy

MiB = 1024 * 1024
NAMESPACE = "kraken-preload"
pytestmark = pytest.mark.realclients


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory, dockerd: Dockerd, containerd: Containerd) -> Iterator[Herd]:
    h = start_herd(Path(tmp_path_factory.mktemp("preload")), agents=1, overrides={"agent": {"preload": {
        "docker_socket": str(dockerd.socket_path),
        "containerd_socket": str(containerd.address),
        "containerd_namespace": NAMESPACE,
        "timeout": "60s",
    }}})
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def image(herd: Herd, tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    """``test/preload:v1`` pushed to the proxy."""
    img = generate_oci_layout(tmp_path_factory.mktemp("oci"), "v1", [1 * MiB], seed=20261124)
    skopeo_copy(img.oci_ref, f"docker://{herd.registry().host}/test/preload:v1")
    assert fetch_manifest(herd.registry().host, "test/preload", "v1")[1] == img.manifest_digest
    return img


def preload(herd: Herd, tag: str, runtime: str, method: str = "POST") -> tuple[int, str]:
    agent = herd.agents[0]
    url = f"http://127.0.0.1:{agent.health_port}/preload/tags/{tag}?runtime={runtime}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_preload_into_docker(herd: Herd, image: GeneratedImage, dockerd: Dockerd) -> None:
    ref = f"localhost:{herd.agents[0].port}/test/preload:v1"
    status, body = preload(herd, "test/preload:v1", "docker")
    assert status == 200, body
    assert dockerd.image_id(ref) == image.config_digest
    assert f"localhost:{herd.agents[0].port}/test/preload@{image.manifest_digest}" in dockerd.repo_digests(ref)
    log = herd.agents[0].log_path.read_text()
    assert "method=HEAD path=/v2/test/preload/manifests/v1 status=200" in log  # docker asked the agent
    for layer in image.layer_digests:
        assert f"method=GET path=/v2/test/preload/blobs/{layer} status=200" in log
    dockerd.rmi(ref)


def test_preload_into_containerd(herd: Herd, image: GeneratedImage, containerd: Containerd) -> None:
    status, body = preload(herd, "test/preload:v1", "containerd")
    assert status == 200, body
    ctr = containerd.ctr(namespace=NAMESPACE)
    assert ctr.image_digest(f"localhost:{herd.agents[0].port}/test/preload:v1") == image.manifest_digest


def test_preload_errors_are_clear(herd: Herd, image: GeneratedImage) -> None:
    assert preload(herd, "test/preload:v1", "docker", method="GET") == (
        405, '{"error": "preload is POST /preload/tags/<repo>:<tag>"}')
    assert preload(herd, "test/preload:v1", "rkt") == (400, '{"error": "runtime must be one of docker, containerd"}')
    assert preload(herd, "test/preload", "docker")[0] == 400
    status, body = preload(herd, "test/preload:missing", "docker")
    assert status == 502 and "manifest unknown" in body.lower(), body
