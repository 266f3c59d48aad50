"""End to end on both cloud stores at once, pulled by agents: one herd whose origin and
build-index route ``s3team/`` to a moto S3 bucket and ``gcsteam/`` to a fake-gcs-server bucket
(every other namespace to a directory), with two agents.

An image pushed through the proxy to each namespace lands in its bucket in the
Docker-distribution layout. Then every cache is wiped: origin, build-index, proxy, tracker and
both agents are stopped, their whole stores deleted, and started again, so the buckets are
the only place the images still exist. Each agent then pulls both images: the tags resolve
through build-index from the buckets, the origin fetches the blobs from the buckets lazily,
and the agents get the layers over P2P, byte for byte and digest for digest.
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kraken.core.digest import Digest
from kraken.devcluster import Process
from tests.support.cluster import Herd, start_herd
from tests.support.gcs import FakeGcs, fake_gcs_server
from tests.support.metrics import metric
from tests.support.moto import AUTH, MotoServer, moto  # noqa: F401
from tests.support.origin import MB
from tests.support.registry_http import fetch_blob, fetch_manifest, push_blob_bytes, push_manifest
from tests.support.waiting import wait_until

GCS_BUCKET = "kraken-agents"
LAYOUT = "docker/registry/v2"
#: namespace -> (repository, the bucket's key prefix)
IMAGES = {"s3": "s3team/app", "gcs": "gcsteam/app"}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    with fake_gcs_server(tmp_path_factory.mktemp("fake-gcs")) as server:
        server.create_bucket(GCS_BUCKET)
        yield server


@pytest.fixture(scope="module")
def s3_bucket(moto: MotoServer) -> str:  # noqa: F811
    return moto.create_bucket()


def routes(moto: MotoServer, s3_bucket: str, gcs: FakeGcs, name_path: str,  # noqa: F811
           other: Path) -> list[dict[str, Any]]:
    s3 = moto.backend_settings(s3_bucket, root_directory="/", name_path=name_path, upload_part_size="5MB",
                               download_part_size="2MB")
    gcs_section = {"bucket": GCS_BUCKET, "endpoint": gcs.url, "root_directory": "/", "name_path": name_path}
    return [{"namespace": "s3team/.*", "backend": {"s3": s3}},
            {"namespace": "gcsteam/.*", "backend": {"gcs": gcs_section}},
            {"namespace": ".*", "backend": {"file": {"root": str(other), "name_path": name_path}}}]


@pytest.fixture(scope="module")
def herd(moto: MotoServer, s3_bucket: str, gcs: FakeGcs,  # noqa: F811
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    workdir = Path(tmp_path_factory.mktemp("buckets"))
    h = start_herd(workdir, agents=2, overrides={
        "origin": {"backends": routes(moto, s3_bucket, gcs, "sharded_docker_blob", workdir / "files-blobs"),
                   "auth": AUTH, "metainfo": {"piece_lengths": {0: "1MB"}}},
        "build-index": {"backends": routes(moto, s3_bucket, gcs, "docker_tag", workdir / "files-tags"),
                        "auth": AUTH},
    })
    try:
        yield h
    finally:
        h.stop()


def bucket_keys(kind: str, moto: MotoServer, s3_bucket: str, gcs: FakeGcs) -> set[str]:  # noqa: F811
    return set(moto.keys(s3_bucket)) if kind == "s3" else set(gcs.objects(GCS_BUCKET))


def p2p_bytes(agent: Process) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.health_port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(metric(text, "kraken_p2p_download_bytes_total", 0.0, source=s) for s in ("origin", "peer"))


def test_images_in_s3_and_gcs_are_pulled_by_agents_after_every_cache_is_wiped(
    herd: Herd, moto: MotoServer, s3_bucket: str, gcs: FakeGcs,  # noqa: F811
) -> None:
    pushed: dict[str, tuple[Digest, bytes, Digest, bytes, Digest]] = {}
    for kind, repo in IMAGES.items():
        config = json.dumps({"architecture": "amd64", "os": "linux", "kind": kind}).encode()
        layer = os.urandom(6 * MB + 7)  # more than one 5 MB S3 part, several 1 MB pieces
        cd = push_blob_bytes(herd.proxy.url, repo, config)
        ld = push_blob_bytes(herd.proxy.url, repo, layer)
        md = push_manifest(herd.proxy.url, repo, "v1", cd, len(config), ld, len(layer))
        pushed[kind] = (cd, config, ld, layer, md)

    for kind, repo in IMAGES.items():
        cd, _, ld, _, md = pushed[kind]
        expected = {f"{LAYOUT}/blobs/sha256/{d.hex[:2]}/{d.hex}/data" for d in (cd, ld, md)}
        expected.add(f"{LAYOUT}/repositories/{repo}/_manifests/tags/v1/current/link")
        wait_until(lambda: bucket_keys(kind, moto, s3_bucket, gcs) == expected, 90, 0.2,  # noqa: B023
                   message=f"the {kind} image in its bucket",
                   details=lambda: str(bucket_keys(kind, moto, s3_bucket, gcs)))  # noqa: B023
    link = f"{LAYOUT}/repositories/{IMAGES['s3']}/_manifests/tags/v1/current/link"
    assert moto.client().get_object(Bucket=s3_bucket, Key=link)["Body"].read().decode().strip() == str(pushed["s3"][4])
    link = f"{LAYOUT}/repositories/{IMAGES['gcs']}/_manifests/tags/v1/current/link"
    assert gcs.read(GCS_BUCKET, link).decode().strip() == str(pushed["gcs"][4])
    assert not [p for p in herd.workdir.glob("files-*/**/*") if p.is_file()], "an image went to the file route"

    order = ["tracker", "origin", "build-index", "proxy", *(a.name for a in herd.agents)]
    for name in reversed(order):
        herd.supervisor.stop(name)
        shutil.rmtree(herd.workdir / name, ignore_errors=True)
    for name in order:
        herd.supervisor.start(herd[name])

    for agent in herd.agents:
        before = p2p_bytes(agent)
        for kind, repo in IMAGES.items():
            cd, config, ld, layer, md = pushed[kind]
            body, digest, _ = fetch_manifest(agent.addr, repo, "v1")
            assert digest == str(md) and Digest.of_bytes(body) == md
            assert [layer["digest"] for layer in json.loads(body)["layers"]] == [str(ld)]
            got = fetch_blob(agent.addr, repo, str(ld))
            assert Digest.of_bytes(got) == ld and got == layer
            assert fetch_blob(agent.addr, repo, str(cd)) == config
        assert p2p_bytes(agent) - before >= 2 * len(pushed["s3"][3]), f"{agent.name} did not pull over P2P"

    since_restart = herd.origin.log_path.read_bytes()[herd.origin.log_offset:].decode(errors="replace")
    for kind, repo in IMAGES.items():
        assert f"blob fetched namespace={repo} digest={pushed[kind][2]} source=ok" in since_restart
