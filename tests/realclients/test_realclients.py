"""Real clients (skopeo, dockerd, ctr, podman, oras) push to and pull from a registry.

Every test runs twice: against Debian's distribution registry (the reference, which proves the
harness itself is sound) and against Kraken's proxy backed by real origin, build-index and
testfs processes. Every round trip checks digests or bytes, not just exit codes. Images are a
few MB so the whole file stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.cluster import Herd
from tests.support.containerd import Containerd
from tests.support.distribution import DistributionRegistry
from tests.support.docker import Dockerd
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.oras import oras_manifest, oras_pull, oras_push
from tests.support.podman import Podman
from tests.support.process import mounts_under, pid_alive
from tests.support.registry_http import fetch_blob, fetch_manifest, sha256_bytes
from tests.support.skopeo import Skopeo, assert_dir_matches_image, skopeo_copy, skopeo_inspect_raw, skopeo_pull_dir

MiB = 1024 * 1024
pytestmark = pytest.mark.realclients


class Registry(Protocol):
    host: str
    url: str

    def access_log(self) -> str: ...

    def catalog(self) -> list[str]: ...


@pytest.fixture(scope="module", params=["distribution", "kraken"])
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    """The registry under test: the reference implementation, then Kraken's proxy."""
    if request.param == "distribution":
        yield request.getfixturevalue("distribution_registry")
    else:
        herd: Herd = request.getfixturevalue("herd")
        yield herd.registry()


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    """A 2-layer (1 MiB + 2 MiB) gzip image shared by the client tests."""
    return generate_oci_layout(tmp_path_factory.mktemp("oci"), "v1", [1 * MiB, 2 * MiB], seed=20261123)


@pytest.fixture(scope="module")
def pushed_ref(small_image: GeneratedImage, registry: Registry) -> str:
    """``host/test/x:1`` after a skopeo push of ``small_image`` (a repo name with a slash)."""
    ref = f"{registry.host}/test/x:1"
    skopeo_copy(small_image.oci_ref, f"docker://{ref}")
    return ref


def _config_of(host: str, repo: str, reference: str) -> tuple[dict, dict]:
    """(manifest, config) as JSON, fetched straight from the registry."""
    manifest = json.loads(fetch_manifest(host, repo, reference)[0])
    config = json.loads(fetch_blob(host, repo, manifest["config"]["digest"]))
    return manifest, config
# --------------------------------------------------------------------------


def test_skopeo_push_pull_roundtrip(
    small_image: GeneratedImage, pushed_ref: str, registry: Registry, tmp_path: Path
) -> None:
    host = registry.host
    # The registry serves exactly the generated manifest (skopeo pushed it unchanged).
    body, digest, ctype = fetch_manifest(host, "test/x", "1")
    assert body == small_image.manifest and digest == small_image.manifest_digest
    assert ctype == "application/vnd.oci.image.manifest.v1+json"
    assert skopeo_inspect_raw(f"docker://{pushed_ref}") == small_image.manifest

    # Pull back into a dir: layout: every blob byte-identical, same manifest digest.
    pulled = skopeo_pull_dir(f"docker://{pushed_ref}", tmp_path / "pulled")
    assert_dir_matches_image(pulled, small_image)

    with Skopeo() as sk:
        assert sk.list_tags(f"docker://{host}/test/x") == ["1"]
        assert sk.inspect_raw(f"docker://{pushed_ref}", config=True) == small_image.config
        assert sk.cache_isolated, "blob-info cache could not be made private (needs root + unshare)"
    assert "test/x" in registry.catalog()


def test_dockerd_pull_and_push(
    dockerd: Dockerd, small_image: GeneratedImage, pushed_ref: str, registry: Registry
) -> None:
    host = registry.host
    dockerd.pull(pushed_ref)
    assert dockerd.image_id(pushed_ref) == small_image.config_digest
    repo = pushed_ref.rsplit(":", 1)[0]
    assert f"{repo}@{small_image.manifest_digest}" in dockerd.repo_digests(pushed_ref)

    # docker push re-compresses layers, so compare what survives: config bytes and diff_ids.
    target = f"{host}/test/docker-pushed:1"
    assert dockerd.load_oci(small_image, "local/loaded:1") == small_image.config_digest
    dockerd.tag("local/loaded:1", target)
    pushed_digest = dockerd.push(target)
    body, digest, _ = fetch_manifest(host, "test/docker-pushed", "1")
    assert digest == pushed_digest == sha256_bytes(body)
    manifest, config = _config_of(host, "test/docker-pushed", "1")
    assert manifest["config"]["digest"] == small_image.config_digest
    assert config["rootfs"]["diff_ids"] == small_image.diff_ids
    for layer in manifest["layers"]:
        assert sha256_bytes(fetch_blob(host, "test/docker-pushed", layer["digest"])) == layer["digest"]

    dockerd.rmi(target, "local/loaded:1", pushed_ref)
    assert not dockerd.has_image(target)
    dockerd.pull(target)
    assert dockerd.image_id(target) == small_image.config_digest


def test_dockerd_registry_mirror_and_cleanup(
    small_image: GeneratedImage, registry: Registry
) -> None:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed")
    host = registry.host
    skopeo_copy(small_image.oci_ref, f"docker://{host}/library/mirrored:1")
    d = Dockerd(registry_mirrors=[registry.url])
    try:
        d.start()
        # A Docker Hub name goes to the mirror (and the proxy trap guards the fallback).
        d.pull("mirrored:1")
        assert d.image_id("mirrored:1") == small_image.config_digest
        assert "GET /v2/library/mirrored/manifests/" in registry.access_log()
        pid = d.process.pid if d.process else -1
        containerd_sock = d.containerd_socket
        assert containerd_sock.exists()
    finally:
        d.stop()
    assert not pid_alive(pid)
    assert not d.root.exists()
    assert mounts_under(d.root) == []


def test_ctr_pull_push(
    containerd: Containerd, small_image: GeneratedImage, pushed_ref: str, registry: Registry
) -> None:
    host = registry.host
    ctr = containerd.ctr(namespace="baseline")
    assert ctr.pull(pushed_ref) == small_image.manifest_digest
    for digest in small_image.blob_digests:
        assert sha256_bytes(ctr.content_get(digest)) == digest

    # containerd pushes the stored manifest and blobs unchanged.
    ctr.tag(pushed_ref, f"{host}/test/ctr:1")
    ctr.push(f"{host}/test/ctr:1")
    assert fetch_manifest(host, "test/ctr", "1")[0] == small_image.manifest

    # Import straight from the generated layout, push, pull back after removal.
    imported = f"{host}/test/ctr-import:1"
    assert ctr.import_oci(small_image, imported) == small_image.manifest_digest
    ctr.push(imported)
    ctr.rmi(imported, f"{host}/test/ctr:1")
    assert imported not in ctr.images()
    assert ctr.pull(imported, unpack=False) == small_image.manifest_digest
    assert fetch_manifest(host, "test/ctr-import", "1")[1] == small_image.manifest_digest


def test_podman_pull_push(small_image: GeneratedImage, pushed_ref: str, registry: Registry) -> None:
    with Podman() as podman:  # private storage: an image store shared across registries mixes digests
        _podman_roundtrip(podman, small_image, pushed_ref, registry.host)


def _podman_roundtrip(podman: Podman, small_image: GeneratedImage, pushed_ref: str, host: str) -> None:
    podman.pull(pushed_ref)
    assert podman.image_digest(pushed_ref) == small_image.manifest_digest

    # podman re-serialises the manifest on push (other key order -> other digest),
    # but must reuse the exact config and layer blobs.
    target = f"{host}/test/podman:1"
    podman.tag(pushed_ref, target)
    pushed_digest = podman.push(target)
    body, digest, _ = fetch_manifest(host, "test/podman", "1")
    assert digest == pushed_digest == sha256_bytes(body)
    assert json.loads(body) == small_image.manifest_json()

    podman.rmi(target, pushed_ref)
    podman.pull(target)
    assert podman.image_digest(target) == pushed_digest

    # Straight from the OCI layout (podman's oci: transport).
    loaded_target = f"{host}/test/podman-oci:1"
    podman.load_oci(small_image, loaded_target)
    podman.push(loaded_target)
    manifest, config = _config_of(host, "test/podman-oci", "1")
    assert manifest["config"]["digest"] == small_image.config_digest
    assert config["rootfs"]["diff_ids"] == small_image.diff_ids


def test_oras_push_pull(registry: Registry, tmp_path: Path) -> None:
    pytest.importorskip("oras")
    host = registry.host
    src = tmp_path / "src"
    src.mkdir()
    payloads = {"artifact.bin": os.urandom(300_000), "note.txt": b"hello kraken\n"}
    for name, data in payloads.items():
        (src / name).write_bytes(data)

    result = oras_push(host, "artifacts/demo:v1", [src / n for n in payloads])
    assert result.status == 201
    body, digest, _ = fetch_manifest(host, "artifacts/demo", "v1")
    assert digest == result.manifest_digest
    manifest = json.loads(body)
    title = "org.opencontainers.image.title"
    layer_digests = {layer["annotations"][title]: layer["digest"] for layer in manifest["layers"]}
    assert layer_digests == {n: "sha256:" + hashlib.sha256(d).hexdigest() for n, d in payloads.items()}
    assert oras_manifest(host, f"{host}/artifacts/demo:v1")["layers"] == manifest["layers"]

    files = oras_pull(host, "artifacts/demo:v1", tmp_path / "out")
    assert sorted(p.name for p in files) == sorted(payloads)
    for p in files:
        assert p.read_bytes() == payloads[p.name]


def test_docker_hub_mirror_configs_for_ctr_podman_skopeo(
    containerd: Containerd, small_image: GeneratedImage, registry: Registry
) -> None:
    """Each client's mirror config sends Docker Hub names to our registry (the Kraken use case)."""
    host = registry.host
    skopeo_copy(small_image.oci_ref, f"docker://{host}/library/mirror-all:1")
    hub_ref = "docker.io/library/mirror-all:1"

    containerd.set_mirror(f"http://{host}")
    ctr = containerd.ctr(namespace="mirror")
    assert ctr.pull(hub_ref, use_hosts_dir=True, plain_http=False, unpack=False) == small_image.manifest_digest

    with Podman(mirrors={"docker.io": host}) as mirrored_podman:
        mirrored_podman.pull(hub_ref)
        assert mirrored_podman.image_digest(hub_ref) == small_image.manifest_digest

    with Skopeo(mirrors={"docker.io": host}) as sk:
        assert sk.inspect_raw(f"docker://{hub_ref}") == small_image.manifest

    log = registry.access_log()
    assert "/v2/library/mirror-all/manifests/1?ns=docker.io" in log  # containerd tags mirror requests
    assert "containers/5.23.1" in log or "skopeo/" in log


def test_second_push_of_an_image_uploads_no_blob_again(
    small_image: GeneratedImage, pushed_ref: str, registry: Registry
) -> None:
    """Kraken's origins are content-addressed across repositories, so pushing an image the
    herd already has (here under another repository) needs only HEADs: no blob is sent again.
    (Distribution scopes blobs by repository and re-uploads; the claim is Kraken's.)"""
    if isinstance(registry, DistributionRegistry):
        pytest.skip("distribution links blobs per repository: a push to a new repository uploads them")
    before = registry.access_log().count("PATCH ")
    skopeo_copy(small_image.oci_ref, f"docker://{registry.host}/test/again:1")
    log = registry.access_log()
    assert log.count("PATCH ") == before, "a blob was uploaded again"
    assert all(f"HEAD /v2/test/again/blobs/{d} 200" in log for d in small_image.blob_digests)
    assert fetch_manifest(registry.host, "test/again", "1")[1] == small_image.manifest_digest
