"""Real clients pull through two agents what was pushed to the proxy.

The issue's claim, checked as a user would: after ``docker push <proxy>/test/app:v1``, pulls of
the same reference from agent-1 and from agent-2 (the devcluster's :16000 and :17000) work with
skopeo, dockerd, ctr and podman, one after the other and at the same time, and give back the
pushed bytes: the same manifest digest and blobs that hash to their digests. An agent is
read-only, so a push to it fails with a clear error, and an unknown tag is "manifest unknown",
never a 500.

One herd (testfs, origin, tracker, build-index, proxy) with two agents, all real processes on
free ports, for the module. Images are a few MiB; every wait polls against a deadline.
"""
from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kraken.devcluster import Process
from tests.support.cluster import Herd, ProxyRegistry, start_herd
from tests.support.containerd import Containerd
from tests.support.docker import Dockerd
from tests.support.metrics import metric
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.podman import Podman
from tests.support.process import ClientError
from tests.support.registry_http import fetch_manifest, http_request, sha256_bytes
from tests.support.skopeo import Skopeo, assert_dir_matches_image, skopeo_copy, skopeo_pull_dir
from tests.support.waiting import wait_until

MiB = 1024 * 1024
pytestmark = pytest.mark.realclients

PushImage = Callable[[str, int], GeneratedImage]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    # Small pieces, so a layer is several pieces and agent-2 can take some from agent-1.
    h = start_herd(Path(tmp_path_factory.mktemp("agent-clients")), agents=2,
                   overrides={"origin": {"metainfo": {"piece_lengths": {0: "256KB"}}}})
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def push_image(cluster: Herd, tmp_path_factory: pytest.TempPathFactory) -> PushImage:
    """``push_image("test/app:v1", seed)``: a 2-layer (1 MiB + 2 MiB) gzip image generated
    from ``seed`` and pushed to the proxy with skopeo (each image its own bytes)."""

    def push(ref: str, seed: int) -> GeneratedImage:
        tag = ref.rsplit(":", 1)[1]
        image = generate_oci_layout(tmp_path_factory.mktemp("oci"), tag, [1 * MiB, 2 * MiB], seed=seed)
        skopeo_copy(image.oci_ref, f"docker://{cluster.registry().host}/{ref}")
        assert fetch_manifest(cluster.registry().host, *ref.split(":"))[1] == image.manifest_digest
        return image

    return push


@pytest.fixture(scope="module")
def app_image(push_image: PushImage) -> GeneratedImage:
    """``test/app:v1``, the issue's image, pushed to the proxy."""
    return push_image("test/app:v1", 20270101)


def agent_metrics(agent: Process) -> str:
    r = http_request(f"http://127.0.0.1:{agent.health_port}/metrics")
    assert r.status == 200, r.body[:300]
    return r.body.decode()


def p2p_bytes(agent: Process) -> float:
    """Payload bytes the agent downloaded over P2P, from origins and other agents."""
    text = agent_metrics(agent)
    return sum(metric(text, "kraken_p2p_download_bytes_total", 0.0, source=s) for s in ("origin", "peer"))


def downloads(agent: Process) -> float:
    """Blobs the agent brought into its cache (one per digest, however many readers)."""
    return metric(agent_metrics(agent), "kraken_agent_blob_fetches_total", 0.0, result="downloaded")


def access_log(agent: Process) -> str:
    """The agent's access log as ``METHOD path status user-agent`` lines."""
    return ProxyRegistry(agent).access_log()


def assert_served(agent: Process, repo: str, digests: list[str], timeout: float = 10.0) -> None:
    """The agent's registry answered a GET of every blob in ``digests`` with a 200.

    Polled: a streamed blob's access-log line is written after its last byte was sent, so a
    client can be done before the line is."""

    def missing() -> list[str]:
        log = access_log(agent)
        return [d for d in digests if f"GET /v2/{repo}/blobs/{d} 200" not in log]

    try:
        wait_until(lambda: not missing(), timeout, message=f"{agent.name} to log the GETs of {repo}'s blobs")
    except TimeoutError:
        raise AssertionError(f"{agent.name} served no GET of {missing()} in {repo}:\n{access_log(agent)}") from None


# ---- skopeo ---------------------------------------------------------------------------------


def test_skopeo_pulls_from_one_agent_then_the_other(
    cluster: Herd, app_image: GeneratedImage, tmp_path: Path,
) -> None:
    one, two = cluster.agents
    before_one, before_two = p2p_bytes(one), p2p_bytes(two)

    pulled_one = skopeo_pull_dir(f"docker://{one.addr}/test/app:v1", tmp_path / "agent-1")
    assert_dir_matches_image(pulled_one, app_image)
    pulled_two = skopeo_pull_dir(f"docker://{two.addr}/test/app:v1", tmp_path / "agent-2")
    assert_dir_matches_image(pulled_two, app_image)
    for digest in app_image.blob_digests:
        name = digest.split(":", 1)[1]
        assert (pulled_one / name).read_bytes() == (pulled_two / name).read_bytes()

    # Each agent downloaded the layers over P2P (agent-2 from the origin and from agent-1):
    # the payload counted is at least every byte of the layers.
    layer_bytes = sum(app_image.layer_sizes)
    for agent, before in ((one, before_one), (two, before_two)):
        wait_until(lambda a=agent, b=before: p2p_bytes(a) - b >= layer_bytes, 20,
                   message=f"{agent.name}'s P2P download bytes to cover the layers")
    # The agents served the blobs (the pulls did not go anywhere else).
    for agent in (one, two):
        assert_served(agent, "test/app", app_image.blob_digests)

    with Skopeo() as sk:
        for agent in (one, two):
            assert sk.inspect_raw(f"docker://{agent.addr}/test/app:v1") == app_image.manifest
            assert sk.inspect_raw(f"docker://{agent.addr}/test/app:v1", config=True) == app_image.config
            assert sk.list_tags(f"docker://{agent.addr}/test/app") == ["v1"]


def test_skopeo_pulls_from_both_agents_at_the_same_time(
    cluster: Herd, push_image: PushImage, tmp_path: Path,
) -> None:
    """Two pulls on each agent at once, of an image neither has: all four get the pushed
    bytes, and each agent downloads each blob once (concurrent readers share a download)."""
    image = push_image("test/concurrent:v1", 20270202)
    agents = cluster.agents
    before = {a.name: downloads(a) for a in agents}
    jobs = [(agent, tmp_path / f"{agent.name}-{i}") for agent in agents for i in range(2)]
    start = threading.Barrier(len(jobs))

    def pull(agent: Process, dest: Path) -> Path:
        start.wait(timeout=30)
        return skopeo_pull_dir(f"docker://{agent.addr}/test/concurrent:v1", dest)

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(pull, agent, dest) for agent, dest in jobs]
        pulled = [f.result(timeout=180) for f in futures]

    for dest in pulled:
        assert_dir_matches_image(dest, image)
    # The manifest, the config and the layers: one download each per agent.
    for agent in agents:
        assert downloads(agent) - before[agent.name] == len(image.blob_digests) + 1, agent.name
        assert_served(agent, "test/concurrent", image.blob_digests)


# ---- dockerd, ctr, podman --------------------------------------------------------------------


def test_docker_push_to_the_proxy_then_pull_from_both_agents(
    dockerd: Dockerd, cluster: Herd, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The issue's scenario: ``docker push`` to the proxy, ``docker pull`` from each agent."""
    image = generate_oci_layout(tmp_path_factory.mktemp("oci"), "v1", [1 * MiB, 2 * MiB], seed=20270303)
    proxy = cluster.registry().host
    pushed_ref = f"{proxy}/test/docker-app:v1"
    one, two = cluster.agents
    refs = [f"{agent.addr}/test/docker-app:v1" for agent in (one, two)]
    try:
        assert dockerd.load_oci(image, "local/docker-app:v1") == image.config_digest
        dockerd.tag("local/docker-app:v1", pushed_ref)
        pushed_digest = dockerd.push(pushed_ref)
        # docker re-compresses the layers on push: the pushed manifest names other layer blobs.
        manifest = json.loads(fetch_manifest(proxy, "test/docker-app", "v1")[0])
        assert manifest["config"]["digest"] == image.config_digest
        layers = [layer["digest"] for layer in manifest["layers"]]
        # Nothing of the image left locally, so the first pull fetches every layer.
        dockerd.rmi(pushed_ref, "local/docker-app:v1")
        assert not dockerd.has_image(pushed_ref)

        for agent, ref in zip((one, two), refs, strict=True):
            dockerd.pull(ref)
            assert dockerd.image_id(ref) == image.config_digest
            assert f"{agent.addr}/test/docker-app@{pushed_digest}" in dockerd.repo_digests(ref)
            assert_served(agent, "test/docker-app", layers)
            # Removed, so the next pull fetches every layer again, from the other agent.
            dockerd.rmi(ref)
            assert not dockerd.has_image(ref)
    finally:
        dockerd.run("rmi", "-f", pushed_ref, "local/docker-app:v1", *refs, check=False)


def test_ctr_and_podman_pull_from_different_agents(
    containerd: Containerd, cluster: Herd, push_image: PushImage,
) -> None:
    image = push_image("test/ctr-app:v1", 20270404)
    one, two = cluster.agents

    ctr = containerd.ctr(namespace="agent-clients")
    ref = f"{one.addr}/test/ctr-app:v1"
    try:
        assert ctr.pull(ref) == image.manifest_digest  # fetch and unpack, as a node does
        assert sha256_bytes(ctr.content_get(image.manifest_digest)) == image.manifest_digest
        for digest in image.blob_digests:
            assert sha256_bytes(ctr.content_get(digest)) == digest
        ctr.rmi(ref)
        assert ref not in ctr.images()
    finally:
        with contextlib.suppress(ClientError):  # already removed, or the pull failed
            ctr.rmi(ref)
    assert_served(one, "test/ctr-app", image.blob_digests)

    ref = f"{two.addr}/test/ctr-app:v1"
    with Podman() as podman:
        image_id = podman.pull(ref)
        assert f"sha256:{image_id}" == image.config_digest
        assert podman.image_digest(ref) == image.manifest_digest
    assert_served(two, "test/ctr-app", image.blob_digests)


# ---- what an agent refuses -------------------------------------------------------------------


def test_a_push_to_an_agent_fails_clearly(cluster: Herd, tmp_path_factory: pytest.TempPathFactory) -> None:
    agent = cluster.agents[0]
    image = generate_oci_layout(tmp_path_factory.mktemp("oci"), "v1", [64 * 1024], seed=20270505)
    with pytest.raises(ClientError) as failed:
        skopeo_copy(image.oci_ref, f"docker://{agent.addr}/test/pushed:v1")
    assert "read-only" in failed.value.stderr, failed.value.stderr

    # The registry API answers every write with UNSUPPORTED (405), in the spec's error JSON.
    writes = [
        ("POST", "/v2/test/pushed/blobs/uploads/", None, {}),
        ("POST", f"/v2/test/pushed/blobs/uploads/?digest={image.config_digest}", image.config,
         {"Content-Type": "application/octet-stream"}),
        ("PUT", "/v2/test/pushed/manifests/v1", image.manifest,
         {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}),
        ("DELETE", f"/v2/test/app/manifests/{sha256_bytes(b'x')}", None, {}),
    ]
    for method, path, body, headers in writes:
        r = http_request(f"{agent.url}{path}", method=method, data=body, headers=headers)
        assert r.status == 405, (method, path, r.status, r.body[:300])
        assert r.headers["content-type"].startswith("application/json"), r.headers
        errors = json.loads(r.body)["errors"]
        assert [e["code"] for e in errors] == ["UNSUPPORTED"], errors
        assert r.headers.get("docker-distribution-api-version") == "registry/2.0"

    # Nothing of it reached the herd: the tag is unknown to the agent and to the proxy.
    for host in (agent.addr, cluster.registry().host):
        r = http_request(f"http://{host}/v2/test/pushed/manifests/v1")
        assert r.status == 404, (host, r.status, r.body[:300])
        assert json.loads(r.body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_an_unknown_tag_is_manifest_unknown(cluster: Herd, app_image: GeneratedImage) -> None:
    agent = cluster.agents[1]
    for ref in ("test/app:missing", "test/no-such-repo:v1"):
        with pytest.raises(ClientError) as failed, Skopeo() as sk:
            sk.inspect_raw(f"docker://{agent.addr}/{ref}")
        assert "manifest unknown" in failed.value.stderr, failed.value.stderr
    log = access_log(agent)
    assert "GET /v2/test/app/manifests/missing 404" in log
    assert "GET /v2/test/no-such-repo/manifests/v1 404" in log
    assert " 500 " not in log
