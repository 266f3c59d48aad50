"""A push through the proxy while S3 refuses the herd's credentials (moto checking signatures,
where the herd's key does not exist), then accepts them again (as when the key is re-activated).

Blobs are acknowledged at once: the origin queues their write-back and retries it, each attempt
failing by name. The tag is different, by design and as in Kraken: build-index writes it
through to its backend before answering, so the manifest PUT fails with a 503 whose OCI error
names the backend, the bucket and the namespace, and the client pushes it again later. Once S3
accepts the key, the queued write-backs complete without anything being pushed again, the
re-pushed tag lands, and the bucket holds the whole image.
"""
from __future__ import annotations

import json
import os
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from kraken.core.digest import Digest
from tests.support.cluster import Herd, start_herd
from tests.support.moto import AUTH, MotoServer, running_moto
from tests.support.registry_http import fetch_blob, fetch_manifest, push_blob_bytes, push_manifest
from tests.support.waiting import wait_until

REPO = "team/app"
LAYOUT = "docker/registry/v2"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A server of this module's own: it is switched to checking signatures."""
    with running_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def bucket(moto: MotoServer) -> str:
    return moto.create_bucket()


@pytest.fixture(scope="module")
def herd(moto: MotoServer, bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    def backends(name_path: str) -> list[dict[str, object]]:
        return [{"namespace": ".*", "backend": {"s3": moto.backend_settings(bucket, root_directory="/",
                                                                             name_path=name_path)}}]

    h = start_herd(Path(tmp_path_factory.mktemp("refused")), overrides={
        "origin": {"backends": backends("sharded_docker_blob"), "auth": AUTH,
                   "writeback": {"retry_interval": "200ms", "max_retry_interval": "1s"},
                   "http_client": {"retries": 0}},
        "build-index": {"backends": backends("docker_tag"), "auth": AUTH, "http_client": {"retries": 0}},
    })
    try:
        yield h
    finally:
        h.stop()


def test_blobs_are_kept_and_written_back_once_s3_accepts_the_key(herd: Herd, moto: MotoServer,
                                                                  bucket: str) -> None:
    moto.require_auth()
    try:
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        layer = os.urandom(700_000)
        cd = push_blob_bytes(herd.proxy.url, REPO, config)  # acknowledged: written back later
        ld = push_blob_bytes(herd.proxy.url, REPO, layer)

        def failures() -> list[str]:
            return [line for line in herd.origin.log_tail(200).splitlines()
                    if "write-back failed, will retry" in line and str(ld) in line]

        wait_until(lambda: failures(), 60, 0.1, message="the layer's write-back refused")
        assert f"namespace={REPO}" in failures()[0] and "backend=\"s3 backend for namespaces '.*'\"" in failures()[0]

        with pytest.raises(urllib.error.HTTPError) as refused:
            push_manifest(herd.proxy.url, REPO, "v1", cd, len(config), ld, len(layer))
        assert refused.value.code == 503
        detail = json.loads(refused.value.read())["errors"][0]["detail"]
        assert f"s3 backend (bucket '{bucket}'" in detail and f"of namespace '{REPO}'" in detail, detail
        assert "InvalidAccessKeyId" in detail, detail
    finally:
        moto.require_auth(False)

    md = push_manifest(herd.proxy.url, REPO, "v1", cd, len(config), ld, len(layer))  # pushed again
    expected = {f"{LAYOUT}/blobs/sha256/{d.hex[:2]}/{d.hex}/data" for d in (cd, ld, md)}
    expected.add(f"{LAYOUT}/repositories/{REPO}/_manifests/tags/v1/current/link")
    wait_until(lambda: set(moto.keys(bucket)) == expected, 60, 0.2, message="the whole image in the bucket",
               details=lambda: str(moto.keys(bucket)))
    assert moto.client().get_object(Bucket=bucket, Key=expected_key(ld))["Body"].read() == layer
    _, digest, _ = fetch_manifest(herd.proxy.addr, REPO, "v1")
    assert digest == str(md)
    assert fetch_blob(herd.proxy.addr, REPO, str(ld)) == layer


def expected_key(digest: Digest) -> str:
    return f"{LAYOUT}/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data"
