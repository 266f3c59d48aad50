"""Cross-cluster replication: two herds, each with its own origin, build-index, testfs and
agent. Herd A's build-index names herd B's in ``remotes``; an image pushed through A's proxy
(tag PUT with ``?replicate=true``) is copied to B, blobs to B's origins and the tag to B's
build-index, and B's agent pulls it, though nothing was ever pushed to B.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kraken.core.digest import Digest
from tests.support.cluster import Herd, start_herd
from tests.support.registry_http import fetch_blob, fetch_manifest, http_request, push_blob_bytes, push_manifest
from tests.support.waiting import wait_until

REPO = "team/app"


@pytest.fixture(scope="module")
def herds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Herd, Herd]]:
    b = start_herd(Path(tmp_path_factory.mktemp("herd-b")), agents=1)
    try:
        a = start_herd(Path(tmp_path_factory.mktemp("herd-a")), overrides={"build-index": {
            "remotes": {f"127.0.0.1:{b.ports.build_index}": ["^team/"]},
            "tag_replication": {"retry_interval": "200ms", "max_retry_interval": "1s"},
        }})
        try:
            yield a, b
        finally:
            a.stop()
    finally:
        b.stop()


def _tag_on(herd: Herd, tag: str) -> str | None:
    r = http_request(f"{herd.build_index.url}/tags/{tag.replace('/', '%2F')}")
    return r.body.decode().strip() if r.status == 200 else None


def test_a_tag_pushed_to_one_cluster_is_pulled_from_the_other(herds: tuple[Herd, Herd]) -> None:
    a, b = herds
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = os.urandom(3_000_000)
    cd = push_blob_bytes(a.proxy.url, REPO, config)
    ld = push_blob_bytes(a.proxy.url, REPO, layer)
    md = push_manifest(a.proxy.url, REPO, "v1", cd, len(config), ld, len(layer))

    wait_until(lambda: _tag_on(b, f"{REPO}:v1") is not None, 60, 0.1, message="the tag on cluster B")
    assert _tag_on(b, f"{REPO}:v1") == str(md)
    copied = [line for line in a.origin.log_tail(400).splitlines() if "blob copied to remote cluster" in line]
    for d in (cd, ld, md):
        assert any(str(d) in line for line in copied), (d, copied)
    # B's origin holds every blob in its own cache, without asking anybody.
    for digest in (cd, ld, md):
        assert http_request(f"{b.origin.url}/internal/namespace/team%2Fapp/blobs/{digest}", method="HEAD").status == 200

    agent = b.agents[0]
    body, digest, _ = fetch_manifest(agent.addr, REPO, "v1")
    assert digest == str(md)
    assert fetch_blob(agent.addr, REPO, str(ld)) == layer
    assert fetch_blob(agent.addr, REPO, str(cd)) == config


def test_a_tag_the_remotes_do_not_match_stays_home(herds: tuple[Herd, Herd]) -> None:
    a, b = herds
    config = b'{"os": "linux"}'
    layer = os.urandom(10_000)
    cd = push_blob_bytes(a.proxy.url, "other/app", config)
    ld = push_blob_bytes(a.proxy.url, "other/app", layer)
    push_manifest(a.proxy.url, "other/app", "v1", cd, len(config), ld, len(layer))
    # No remote matches "other/...", so no task was queued for it; a matching tag pushed after
    # it does reach B.
    cd2 = push_blob_bytes(a.proxy.url, REPO, config)
    ld2 = push_blob_bytes(a.proxy.url, REPO, layer)
    push_manifest(a.proxy.url, REPO, "v2", cd2, len(config), ld2, len(layer))
    wait_until(lambda: _tag_on(b, f"{REPO}:v2") is not None, 60, 0.1, message="the matching tag on cluster B")
    assert _tag_on(b, "other/app:v1") is None
    assert _tag_on(a, "other/app:v1") is not None


def test_replication_waits_out_a_remote_that_is_down_and_survives_a_restart(herds: tuple[Herd, Herd]) -> None:
    """B's build-index is down when the tag is pushed: the push succeeds, the task is retried,
    and A's build-index is restarted meanwhile (the queue is on disk); once B's build-index is
    back, the tag and its blobs arrive."""
    a, b = herds
    config = b'{"os": "linux", "variant": "down"}'
    layer = os.urandom(200_000)
    b.supervisor.kill("build-index")
    try:
        cd = push_blob_bytes(a.proxy.url, REPO, config)
        ld = push_blob_bytes(a.proxy.url, REPO, layer)
        md = push_manifest(a.proxy.url, REPO, "v3", cd, len(config), ld, len(layer))

        def failures() -> list[str]:
            return [line for line in a.build_index.log_tail(200).splitlines()
                    if "tag replication failed, will retry" in line and f"{REPO}:v3" in line]

        wait_until(lambda: failures(), 60, 0.1, message="a failed replication attempt")
        a.supervisor.restart("build-index")
    finally:
        b.supervisor.start(b.build_index)
    wait_until(lambda: _tag_on(b, f"{REPO}:v3") is not None, 60, 0.1, message="the tag on cluster B")
    assert _tag_on(b, f"{REPO}:v3") == str(md)
    assert fetch_blob(b.agents[0].addr, REPO, str(ld)) == layer


def _push_unreplicated(a: Herd, tag: str) -> tuple[Digest, bytes, list[Digest]]:
    """An image on A's origins, tagged on A's build-index directly, without ``?replicate``."""
    config, layer = b'{"os": "linux", "tag": "%s"}' % tag.encode(), os.urandom(50_000)
    cd, ld = push_blob_bytes(a.proxy.url, REPO, config), push_blob_bytes(a.proxy.url, REPO, layer)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(cd),
                                      "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(ld),
                                       "size": len(layer)}]}).encode()
    md = push_blob_bytes(a.proxy.url, REPO, manifest)
    put = http_request(f"{a.build_index.url}/tags/{REPO.replace('/', '%2F')}:{tag}/digest/{md}", method="PUT")
    assert put.status == 200, put
    return md, layer, [cd, ld, md]


def test_a_neighbours_duplicate_and_a_manual_replication_copy_the_tag(herds: tuple[Herd, Herd]) -> None:
    a, b = herds
    md, layer, deps = _push_unreplicated(a, "dup")
    assert _tag_on(b, f"{REPO}:dup") is None  # not asked to replicate
    url = f"{a.build_index.url}/internal/duplicate/remotes/tags/{REPO.replace('/', '%2F')}:dup/digest/{md}"
    bad = http_request(url, method="POST", data=b'{"delay": -1}')
    assert bad.status == 400, bad
    elsewhere = url.replace(str(md), str(deps[0]))  # the tag does not point there: refused
    assert http_request(elsewhere, method="POST", data=b'{"delay": 0}').status == 409
    ok = http_request(url, method="POST", data=b'{"delay": 0}')
    assert ok.status == 200, ok
    wait_until(lambda: _tag_on(b, f"{REPO}:dup") == str(md), 60, 0.1, message="the duplicate's tag on B")
    assert fetch_blob(b.agents[0].addr, REPO, str(deps[1])) == layer

    md2, _, _ = _push_unreplicated(a, "manual")
    again = http_request(f"{a.build_index.url}/remotes/tags/{REPO.replace('/', '%2F')}:manual", method="POST")
    assert again.status == 200, again
    wait_until(lambda: _tag_on(b, f"{REPO}:manual") == str(md2), 60, 0.1, message="the re-replicated tag on B")
