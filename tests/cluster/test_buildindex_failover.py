"""Two build-index processes on one tag backend (testfs); the proxy and an agent know both
(``build_index.addrs``). A tag PUT on one is read on the other, and pushes and pulls keep
working while either is killed with ``kill -9``. Real processes throughout."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from kraken.config import deep_merge
from kraken.core.digest import Digest
from kraken.devcluster import AgentPorts, Process, agent_processes, free_port, write_overlay
from tests.support.cluster import Herd, start_herd
from tests.support.metrics import metric, scrape
from tests.support.registry_http import fetch_blob, fetch_manifest, http_request, push_blob_bytes, push_manifest

FAILOVER_LOG = "build-index failed, trying the next one"


@dataclass
class TwoIndexes:
    herd: Herd
    agent: Process

    @property
    def indexes(self) -> list[Process]:
        return [self.herd.build_index, self.herd["build-index-2"]]


def _overlay(path: Path, settings: dict) -> None:
    """Merge ``settings`` into a process's overlay file (read again at its next start)."""
    path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(path.read_text()), settings), sort_keys=False))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoIndexes]:
    workdir = tmp_path_factory.mktemp("bi-failover")
    herd = start_herd(workdir)
    try:
        sup = herd.supervisor
        first = herd.build_index
        assert first.config is not None and herd.proxy.config is not None
        config = write_overlay(herd.workdir / "config" / "build-index-2.yaml", first.config,
                               {"store": {"root": str(herd.workdir / "build-index-2")}})
        second = sup.start(Process("build-index-2", "build-index", free_port(), config,
                                   herd.workdir / "logs" / "build-index-2.log"))
        both = {"build_index": {"addrs": [first.addr, second.addr]}}
        _overlay(herd.proxy.config, both)
        sup.restart("proxy")
        (agent,) = agent_processes(herd.workdir, herd.ports, {"agent-1": AgentPorts.free()}, overrides=both)
        sup.start(agent)
        yield TwoIndexes(herd, agent)
    finally:
        herd.stop()


@dataclass
class Image:
    repo: str
    tag: str
    manifest: Digest
    layer: Digest
    layer_bytes: bytes


def push_image(cluster: TwoIndexes, repo: str, tag: str) -> Image:
    proxy = cluster.herd.proxy.url
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = os.urandom(64 << 10)
    c, lay = push_blob_bytes(proxy, repo, config), push_blob_bytes(proxy, repo, layer)
    return Image(repo, tag, push_manifest(proxy, repo, tag, c, len(config), lay, len(layer)), lay, layer)


def pull(cluster: TwoIndexes, image: Image) -> None:
    """The tag, its manifest and its layer through the agent (tag from build-index, bytes by P2P)."""
    _, digest, _ = fetch_manifest(cluster.agent.addr, image.repo, image.tag)
    assert digest == str(image.manifest)
    assert fetch_blob(cluster.agent.addr, image.repo, str(image.layer)) == image.layer_bytes


def tag_on(index: Process, image: Image) -> str | None:
    r = http_request(f"{index.url}/tags/{quote(f'{image.repo}:{image.tag}', safe=':')}")
    return r.body.decode() if r.status == 200 else None


def test_tag_put_on_one_is_read_on_the_other(cluster: TwoIndexes) -> None:
    proxy = cluster.herd.proxy.url
    config, layer = b'{"os": "linux"}', os.urandom(1024)
    c, lay = push_blob_bytes(proxy, "fo/shared", config), push_blob_bytes(proxy, "fo/shared", layer)
    manifest = push_manifest(proxy, "fo/shared", "v0", c, len(config), lay, len(layer))
    first, second = cluster.indexes
    for index, other, tag in [(first, second, "one"), (second, first, "two")]:
        r = http_request(f"{index.url}/tags/fo%2Fshared:{tag}/digest/{manifest}", method="PUT")
        assert r.status == 200, r
        r = http_request(f"{other.url}/tags/fo%2Fshared:{tag}")
        assert (r.status, r.body.decode()) == (200, str(manifest))


def test_pushes_and_pulls_survive_losing_either_build_index(cluster: TwoIndexes) -> None:
    sup = cluster.herd.supervisor
    first, second = cluster.indexes
    images = [push_image(cluster, "fo/app", "before")]
    pull(cluster, images[0])

    for dead, alive in [(first, second), (second, first)]:
        sup.kill(dead.name)
        image = push_image(cluster, "fo/app", f"without-{dead.name}")
        images.append(image)
        assert tag_on(alive, image) == str(image.manifest)
        for each in images:
            pull(cluster, each)
        sup.start(dead)

    # Each client met a dead build-index at least once (whichever it preferred was killed).
    proxy_metrics, agent_metrics = scrape(cluster.herd.proxy.url), scrape(f"http://127.0.0.1:{cluster.agent.health_port}")
    assert metric(proxy_metrics, "kraken_build_index_failovers_total") >= 1
    assert metric(agent_metrics, "kraken_build_index_failovers_total") >= 1
    assert FAILOVER_LOG in cluster.herd.proxy.log_tail(500)
    assert FAILOVER_LOG in cluster.agent.log_tail(500)
