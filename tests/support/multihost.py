"""What the multi-host tests share (tests/realclients/test_multihost.py: native deploys;
tests/realclients/test_multihost_docker.py: Docker deploys and the bridge-networked devcluster): agent
hosts on network namespaces, running commands on them, and what a user checks after a pull."""
from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.docker import Dockerd
from tests.support.metrics import metric
from tests.support.netns import NetnsHost, netns_available
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.process import run_client
from tests.support.registry_http import http_request
from tests.support.skopeo import skopeo_copy

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "examples" / "multihost" / "scripts"
CHECKS = REPO_ROOT / "examples" / "multihost" / "test"
#: Every agent host pulls from its own agent here (its own loopback).
AGENT_REGISTRY = "127.0.0.1:16000"
MiB = 1 << 20


def skip_reason(*binaries: str) -> str | None:
    """Why these tests cannot run here (no namespaces, not root, a binary missing), or None."""
    reason = netns_available()
    for binary in binaries:
        if reason is None and shutil.which(binary) is None:
            reason = f"{binary} is not installed (run scripts/install-system-deps.sh)"
    return reason


def run_on(host: NetnsHost, argv: list[str], env: Mapping[str, str], timeout: float = 240.0,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` on ``host`` (inside its network namespace)."""
    return run_client(host.exec_argv(argv), env=env, timeout=timeout, check=check)


@dataclass
class AgentHost:
    """One agent host: its namespace, its KRAKEN_HOME and its dockerd."""

    host: NetnsHost
    home: Path
    dockerd: Dockerd | None = None

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def metrics_url(self) -> str:
        """The agent server's metrics, reached from the test (host namespace) over the bridge."""
        return f"http://{self.host.address}:16002/metrics"

    def docker(self) -> Dockerd:
        assert self.dockerd is not None, f"{self.name} has no dockerd"
        return self.dockerd


@dataclass
class Pushed:
    image: GeneratedImage
    ref: str  # repo:tag on the herd's proxy
    digest: str  # the manifest digest skopeo reported for the push


def push_images(layout: Path, proxy: str, wanted: Mapping[str, tuple[str, list[int], int]]) -> dict[str, Pushed]:
    """Generate each image of ``wanted`` (key -> (repo:tag, layer sizes, seed)) into ``layout``
    and push it with skopeo to the herd's ``proxy``; the digest skopeo reports must be the
    manifest's."""
    pushed = {}
    for key, (ref, sizes, seed) in wanted.items():
        image = generate_oci_layout(layout, key, sizes, seed=seed)
        digest_file = layout.parent / f"{key}.digest"
        skopeo_copy(image.oci_ref, f"docker://{proxy}/{ref}", extra_args=["--digestfile", str(digest_file)])
        pushed[key] = Pushed(image, ref, digest_file.read_text().strip())
        assert pushed[key].digest == image.manifest_digest, f"push of {ref} reported another manifest digest"
    return pushed


def pull_by_address_and_mirror(agent: AgentHost, pushed: Pushed) -> float:
    """The host's dockerd pulls ``pushed`` from its agent by address (``127.0.0.1:16000/...``),
    then by its Docker Hub name through ``registry-mirrors`` (the same agent), checking each;
    returns the seconds the first pull took."""
    d = agent.docker()
    t0 = time.monotonic()
    d.pull(f"{AGENT_REGISTRY}/{pushed.ref}")
    seconds = time.monotonic() - t0
    assert_image(agent, f"{AGENT_REGISTRY}/{pushed.ref}", pushed)
    d.pull(pushed.ref)  # company/app:v1 -> docker.io -> registry-mirrors: this host's agent
    assert_image(agent, pushed.ref, pushed)
    return seconds


def peer_and_origin_bytes(agent: AgentHost) -> tuple[float, float]:
    """(bytes from peers, bytes from origins) the agent has downloaded over P2P so far."""
    r = http_request(agent.metrics_url, timeout=10)
    assert r.status == 200, f"{agent.name} metrics -> {r.status}"
    text = r.body.decode()
    return (metric(text, "kraken_p2p_download_bytes_total", 0.0, source="peer"),
            metric(text, "kraken_p2p_download_bytes_total", 0.0, source="origin"))


def assert_image(agent: AgentHost, ref: str, pushed: Pushed) -> None:
    """What a user checks after a pull: the image ID is the config digest and the pulled
    manifest is the one the push reported."""
    d = agent.docker()
    assert d.image_id(ref) == pushed.image.config_digest, f"{agent.name}: {ref} has another image ID"
    repo = ref.rsplit(":", 1)[0]
    digests = [entry.partition("@")[2] for entry in d.repo_digests(ref) if entry.partition("@")[0] == repo]
    assert digests == [pushed.digest], f"{agent.name}: {ref} RepoDigests {d.repo_digests(ref)}, pushed {pushed.digest}"
