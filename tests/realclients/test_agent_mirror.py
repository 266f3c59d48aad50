"""An agent as the Docker Hub mirror of a host's runtime (the usual production setup).

Images pushed to the herd under Docker Hub names (``company/myapp``, ``library/nginx``) are
pulled by their short names through a dockerd whose ``registry-mirrors`` is the agent, and by
containerd through a ``hosts.toml`` mirror (which adds ``?ns=docker.io`` to every request). A
name the herd does not have fails at the mirror and docker falls back to Docker Hub, which is
unreachable here: the pull fails, nothing hangs.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Herd, start_herd
from tests.support.containerd import Containerd
from tests.support.docker import Dockerd
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.process import ClientError
from tests.support.skopeo import skopeo_copy

MiB = 1024 * 1024
pytestmark = pytest.mark.realclients


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    h = start_herd(Path(tmp_path_factory.mktemp("mirror")), agents=1)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def images(herd: Herd, tmp_path_factory: pytest.TempPathFactory) -> dict[str, GeneratedImage]:
    """``company/myapp:v1`` and ``library/nginx:latest`` pushed to the proxy."""
    pushed = {}
    for seed, ref in enumerate(("company/myapp:v1", "library/nginx:latest")):
        img = generate_oci_layout(tmp_path_factory.mktemp("oci"), ref.split(":")[1], [1 * MiB], seed=7000 + seed)
        skopeo_copy(img.oci_ref, f"docker://{herd.registry().host}/{ref}")
        pushed[ref] = img
    return pushed


@pytest.fixture(scope="module")
def mirrored_dockerd(herd: Herd) -> Iterator[Dockerd]:
    d = Dockerd(registry_mirrors=[herd.agents[0].url])
    try:
        d.start()
        yield d
    finally:
        d.stop()


def agent_log(herd: Herd) -> str:
    return herd.agents[0].log_path.read_text()


def test_docker_pulls_hub_names_through_the_agent(
    herd: Herd, images: dict[str, GeneratedImage], mirrored_dockerd: Dockerd,
) -> None:
    mirrored_dockerd.pull("company/myapp:v1")
    assert mirrored_dockerd.image_id("company/myapp:v1") == images["company/myapp:v1"].config_digest
    mirrored_dockerd.pull("nginx:latest")  # library/nginx, as Docker Hub spells official images
    assert mirrored_dockerd.image_id("nginx:latest") == images["library/nginx:latest"].config_digest
    log = agent_log(herd)
    assert "method=HEAD path=/v2/company/myapp/manifests/v1 status=200" in log
    assert "method=HEAD path=/v2/library/nginx/manifests/latest status=200" in log


def test_a_name_the_herd_lacks_fails_cleanly(herd: Herd, mirrored_dockerd: Dockerd) -> None:
    with pytest.raises(ClientError):
        mirrored_dockerd.pull("company/absent:v1")
    assert "method=HEAD path=/v2/company/absent/manifests/v1 status=404" in agent_log(herd)


def test_containerd_hosts_toml_mirror(
    herd: Herd, images: dict[str, GeneratedImage], containerd: Containerd,
) -> None:
    containerd.set_mirror(herd.agents[0].url)
    ctr = containerd.ctr(namespace="agent-mirror")
    digest = ctr.pull("docker.io/company/myapp:v1", use_hosts_dir=True, plain_http=False, unpack=False)
    assert digest == images["company/myapp:v1"].manifest_digest
    assert "method=HEAD path=/v2/company/myapp/manifests/v1?ns=docker.io status=200" in agent_log(herd)
