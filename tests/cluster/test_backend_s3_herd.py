"""A herd whose origin and build-index keep the ``s3team/`` namespace in S3 (a moto server).

An image pushed through the proxy lands in the bucket in the Docker-distribution layout (blobs
under ``docker/registry/v2/blobs``, the tag link under ``docker/registry/v2/repositories``),
where a plain registry sharing the bucket would find it; after the origin, build-index and
proxy are restarted with empty stores, the image is pulled again from what S3 holds.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kraken.core.digest import Digest
from tests.support.cluster import Herd, start_herd
from tests.support.moto import AUTH, MotoServer, moto  # noqa: F401
from tests.support.registry_http import fetch_blob, fetch_manifest, push_blob_bytes, push_manifest
from tests.support.waiting import wait_until

REPO = "s3team/app"
BLOBS = "docker/registry/v2/blobs/sha256"


@pytest.fixture(scope="module")
def bucket(moto: MotoServer) -> str:  # noqa: F811
    return moto.create_bucket()


@pytest.fixture(scope="module")
def herd(moto: MotoServer, bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:  # noqa: F811
    workdir = Path(tmp_path_factory.mktemp("s3herd"))

    def backends(name_path: str) -> list[dict[str, object]]:
        s3 = moto.backend_settings(bucket, root_directory="/", name_path=name_path, upload_part_size="5MB",
                                   download_part_size="2MB")
        return [{"namespace": "s3team/.*", "backend": {"s3": s3}},
                {"namespace": ".*", "backend": {"file": {"root": str(workdir / f"file-{name_path}"),
                                                         "name_path": name_path}}}]

    h = start_herd(workdir, overrides={
        "origin": {"backends": backends("sharded_docker_blob"), "auth": AUTH,
                   "writeback": {"retry_interval": "100ms", "max_retry_interval": "500ms"}},
        "build-index": {"backends": backends("docker_tag"), "auth": AUTH},
    })
    try:
        yield h
    finally:
        h.stop()


def test_push_lands_in_the_bucket_and_pulls_back_after_the_caches_are_wiped(
    herd: Herd, moto: MotoServer, bucket: str,  # noqa: F811
) -> None:
    registry = herd.proxy.url
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = os.urandom(12 << 20)  # more than one 5 MiB part: a multipart upload
    config_digest = push_blob_bytes(registry, REPO, config)
    layer_digest = push_blob_bytes(registry, REPO, layer)
    manifest_digest = push_manifest(registry, REPO, "v1", config_digest, len(config), layer_digest, len(layer))

    def key(digest: Digest) -> str:
        return f"{BLOBS}/{digest.hex[:2]}/{digest.hex}/data"

    tag_link = f"docker/registry/v2/repositories/{REPO}/_manifests/tags/v1/current/link"
    expected = sorted([key(config_digest), key(layer_digest), key(manifest_digest), tag_link])
    wait_until(lambda: moto.keys(bucket) == expected, 60, 0.2, message="the image's objects in the bucket",
               details=lambda: f"bucket holds {moto.keys(bucket)}")
    s3 = moto.client()
    assert s3.get_object(Bucket=bucket, Key=key(layer_digest))["Body"].read() == layer
    assert s3.get_object(Bucket=bucket, Key=tag_link)["Body"].read().decode().strip() == str(manifest_digest)
    assert not list((herd.workdir / "file-sharded_docker_blob").rglob("data")), "s3team/ went to the file backend"

    for name in ("proxy", "build-index", "origin"):
        herd.supervisor.stop(name)
        shutil.rmtree(herd.workdir / name, ignore_errors=True)
    for name in ("origin", "build-index", "proxy"):
        herd.supervisor.start(herd.supervisor.processes[name])

    body, digest, _ = fetch_manifest(herd.proxy.addr, REPO, "v1")
    assert digest == str(manifest_digest)
    assert fetch_blob(herd.proxy.addr, REPO, str(layer_digest)) == layer
    assert fetch_blob(herd.proxy.addr, REPO, str(config_digest)) == config
    assert json.loads(body)["layers"][0]["digest"] == str(layer_digest)
