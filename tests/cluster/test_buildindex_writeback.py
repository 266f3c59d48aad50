"""build-index with ``tag_store.write_through: false``: pushes succeed while the tag backend
(testfs) is down, the tags are written back once it returns, also after a ``kill -9`` of
build-index in between. Real processes: testfs, origin, tracker, build-index, proxy."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from kraken.core.digest import Digest
from tests.support.cluster import Herd, start_herd
from tests.support.metrics import metric, scrape
from tests.support.registry_http import fetch_manifest, http_request, push_blob_bytes, push_manifest
from tests.support.waiting import wait_until

WRITE_BACK = {"tag_store": {"write_through": False, "retry_interval": "100ms", "max_retry_interval": "500ms"}}


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    herd = start_herd(tmp_path_factory.mktemp("bi-writeback"), overrides={"build-index": WRITE_BACK})
    try:
        yield herd
    finally:
        herd.stop()


@pytest.fixture
def backend_up(herd: Herd) -> Iterator[None]:
    """Every test starts and ends with testfs running."""
    if not herd.testfs.alive():
        herd.supervisor.start(herd.testfs)
    yield
    if not herd.testfs.alive():
        herd.supervisor.start(herd.testfs)


def push_image(herd: Herd, repo: str, tag: str) -> Digest:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = os.urandom(2048)
    c, lay = push_blob_bytes(herd.proxy.url, repo, config), push_blob_bytes(herd.proxy.url, repo, layer)
    return push_manifest(herd.proxy.url, repo, tag, c, len(config), lay, len(layer))


def backend_tag(herd: Herd, repo: str, tag: str) -> str | None:
    """The digest testfs holds for ``repo:tag`` (distribution layout), None if none."""
    path = f"docker/registry/v2/repositories/{repo}/_manifests/tags/{tag}/current/link"
    r = http_request(f"{herd.testfs.url}/files/{path}")
    return r.body.decode() if r.status == 200 else None


def buildindex_tag(herd: Herd, repo: str, tag: str) -> str | None:
    r = http_request(f"{herd.build_index.url}/tags/{quote(f'{repo}:{tag}', safe=':')}")
    assert r.status in (200, 404), r
    return r.body.decode() if r.status == 200 else None


def pending(herd: Herd) -> float:
    return metric(scrape(herd.build_index.url), "kraken_buildindex_tag_writeback_pending")


def failures(herd: Herd) -> float:
    return metric(scrape(herd.build_index.url), "kraken_buildindex_tag_writeback_failures_total", default=0.0)


@pytest.mark.usefixtures("backend_up")
def test_push_while_backend_down_is_written_back(herd: Herd) -> None:
    repo = "wb/down"
    herd.supervisor.stop("testfs")
    digest = push_image(herd, repo, "v1")  # 201: tag stored on build-index's disk, write-back queued

    _, served, _ = fetch_manifest(herd.proxy.addr, repo, "v1")  # this node answers its pending copy
    assert served == str(digest)
    assert buildindex_tag(herd, repo, "v1") == str(digest)
    assert pending(herd) == 1
    wait_until(lambda: failures(herd) >= 2, 30, 0.1, message="write-back attempts failing")

    herd.supervisor.start(herd.testfs)
    wait_until(lambda: backend_tag(herd, repo, "v1") == str(digest), 30, 0.1, message="tag written back")
    wait_until(lambda: pending(herd) == 0, 10, 0.1, message="no write-back pending")
    assert buildindex_tag(herd, repo, "v1") == str(digest)
    assert "tag written back" in herd.build_index.log_tail(200)


@pytest.mark.usefixtures("backend_up")
def test_pending_tags_survive_kill_and_repush(herd: Herd) -> None:
    """The newest PUT of a tag wins even when an older one is still queued, and what was
    pending when build-index died is written back by the next run."""
    repo = "wb/crash"
    herd.supervisor.stop("testfs")
    first = push_image(herd, repo, "latest")
    second = push_image(herd, repo, "latest")
    other = push_image(herd, repo, "other")
    assert first != second
    herd.supervisor.kill("build-index")
    herd.supervisor.start(herd.build_index)

    assert buildindex_tag(herd, repo, "latest") == str(second)
    assert buildindex_tag(herd, repo, "other") == str(other)
    assert pending(herd) >= 2

    herd.supervisor.start(herd.testfs)
    wait_until(lambda: pending(herd) == 0, 30, 0.1, message="write-backs done")
    assert backend_tag(herd, repo, "latest") == str(second)
    assert backend_tag(herd, repo, "other") == str(other)
    assert not any(Path(herd.workdir, "build-index", "pending").glob("*/*"))


@pytest.mark.usefixtures("backend_up")
def test_write_back_tag_is_read_by_other_node_once_written(herd: Herd, tmp_path: Path) -> None:
    """A second build-index (write-through) on the same backend reads the tag the first one
    wrote back."""
    from kraken.devcluster import Process, free_port, write_overlay

    assert herd.build_index.config is not None
    config = write_overlay(tmp_path / "bi2.yaml", herd.build_index.config, {
        "store": {"root": str(tmp_path / "bi2")}, "tag_store": {"write_through": True}})
    second = herd.supervisor.start(Process("build-index-2", "build-index", free_port(), config,
                                           tmp_path / "bi2.log"))
    try:
        repo = "wb/shared"
        digest = push_image(herd, repo, "v1")
        wait_until(lambda: backend_tag(herd, repo, "v1") == str(digest), 30, 0.1, message="tag written back")
        r = http_request(f"{second.url}/tags/{quote(f'{repo}:v1', safe=':')}")
        assert (r.status, r.body.decode()) == (200, str(digest))
    finally:
        herd.supervisor.stop("build-index-2")
