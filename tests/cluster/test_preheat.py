"""Preheat through the proxy's second server, on a herd of real processes.

Two origins own every blob (``max_replica: 2``). An image is pushed through the proxy, written
back to testfs, then evicted from both origins' caches (``POST /forcecleanup?ttl_hr=0``), as
if pushed long ago. A registry notification (or Harbor's call, or Kraken's prefetch call) for
it must make both origins fetch every blob back from the backend before anyone pulls: the
job reaches ``done``, counts every blob and byte, and each origin then has every blob in its
cache (its cache-only ``HEAD /internal/...`` answers 200, and a normal read starts no backend
fetch). The second server answers only its allow-list (127.0.0.1; the tests call from
127.0.0.2 to be refused) and only with its bearer token.
"""
from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from kraken.core.digest import Digest
from kraken.devcluster.net import free_port
from kraken.registry.manifest import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from tests.support.cluster import Herd, start_herd
from tests.support.metrics import metric_sum, scrape
from tests.support.registry_http import http_request, push_blob_bytes
from tests.support.waiting import wait_until

TOKEN = "preheat-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


@dataclass
class Preheat:
    herd: Herd
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = http_request(f"{self.url}{path}", method="POST", data=data, headers=AUTH if headers is None else headers)
        return r.status, json.loads(r.body or b"{}")

    def job(self, job_id: str) -> dict[str, Any]:
        r = http_request(f"{self.url}/preheat/{job_id}")
        assert r.status == 200, r.body
        return json.loads(r.body)

    def finished(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        return wait_until(lambda: _if_finished(self.job(job_id)), timeout, 0.1, message=f"preheat job {job_id}")


def _if_finished(job: dict[str, Any]) -> dict[str, Any] | None:
    return job if job["state"] in ("done", "failed") else None


@pytest.fixture(scope="module")
def preheat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Preheat]:
    port = free_port()
    herd = start_herd(Path(tmp_path_factory.mktemp("preheat")), origins=2, max_replica=2, overrides={
        "origin": {"writeback": {"retry_interval": "50ms", "max_retry_interval": "200ms"},
                   "replication": {"writeback_delay": "100ms"}},
        "proxy": {"server": {"listen": {"host": "127.0.0.1", "port": port}, "allowed_cidrs": ["127.0.0.1/32"],
                             "token": TOKEN, "manifest_wait": "1s"}},
    })
    try:
        wait_until(lambda: http_request(f"http://127.0.0.1:{port}/health").status == 200, 30, 0.1,
                   message="the proxy's second server")
        yield Preheat(herd, port)
    finally:
        herd.stop()


@dataclass
class Image:
    repo: str
    tag: str
    digest: Digest
    media_type: str
    blobs: dict[Digest, int]  # every blob, manifests included -> size


def push_manifest(herd: Herd, repo: str, reference: str, doc: dict[str, Any]) -> tuple[Digest, int]:
    body = json.dumps(doc).encode()
    r = http_request(f"{herd.proxy.url}/v2/{repo}/manifests/{reference}", method="PUT", data=body,
                     headers={"Content-Type": doc["mediaType"]})
    assert r.status == 201, r.body
    digest = Digest.of_bytes(body)
    wait_replicated(herd, repo, [digest])
    return digest, len(body)


def wait_replicated(herd: Herd, repo: str, digests: list[Digest]) -> None:
    """Until every origin has the blobs: a blob pushed to one owner reaches the other by
    replication, after the push, and a manifest naming it is checked on its first owner."""
    wait_until(lambda: all(internal_head(o.url, repo, d) == 200 for o in herd.origins for d in digests), 60, 0.1,
               message="the blobs replicated to every owner")


def push_image(herd: Herd, repo: str, tag: str, layers: int = 2) -> Image:
    """An OCI image of a config and ``layers`` random layers, pushed through the proxy."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"},
                         "nonce": os.urandom(8).hex()}).encode()
    blobs = {push_blob_bytes(herd.proxy.url, repo, config): len(config)}
    layer_descriptors = []
    for i in range(layers):
        data = os.urandom(300_000 + 1_000 * i)
        digest = push_blob_bytes(herd.proxy.url, repo, data)
        blobs[digest] = len(data)
        layer_descriptors.append({"mediaType": LAYER_TYPE, "digest": str(digest), "size": len(data)})
    wait_replicated(herd, repo, list(blobs))
    config_digest = next(iter(blobs))
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": CONFIG_TYPE, "digest": str(config_digest), "size": len(config)},
           "layers": layer_descriptors}
    digest, size = push_manifest(herd, repo, tag, doc)
    blobs[digest] = size
    return Image(repo, tag, digest, OCI_MANIFEST, blobs)


def push_index(herd: Herd, repo: str, tag: str) -> Image:
    """An OCI index of two images (each also tagged ``child-<i>``), tagged ``tag``."""
    children = [push_image(herd, repo, f"child-{i}") for i in range(2)]
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(c.digest), "size": c.blobs[c.digest],
         "platform": {"architecture": "amd64", "os": f"os{i}"}} for i, c in enumerate(children)]}
    digest, size = push_manifest(herd, repo, tag, doc)
    blobs = {digest: size}
    for child in children:
        blobs.update(child.blobs)
    return Image(repo, tag, digest, OCI_INDEX, blobs)


def internal_head(origin_url: str, repo: str, digest: Digest) -> int:
    """The origin's cache-only HEAD (never starts a backend fetch)."""
    return http_request(f"{origin_url}/internal/namespace/{quote(repo, safe='')}/blobs/{digest}",
                        method="HEAD").status


def wipe_origins(herd: Herd, image: Image) -> None:
    """Evict the image from every origin, once its write-back and replication are done (a
    pending one protects a blob from eviction)."""

    def evicted() -> bool:
        for origin in herd.origins:
            assert http_request(f"{origin.url}/forcecleanup?ttl_hr=0", method="POST").status == 200
        return all(internal_head(o.url, image.repo, d) == 404 for o in herd.origins for d in image.blobs)

    wait_until(evicted, 60, 0.2, message="the image evicted from every origin")


def backend_fetches(herd: Herd) -> float:
    return sum(metric_sum(scrape(o.url), "kraken_origin_backend_fetches_total") for o in herd.origins)


def notification(image: Image, **target: Any) -> dict[str, Any]:
    return {"events": [{
        "id": os.urandom(8).hex(), "timestamp": "2026-12-05T00:00:00Z", "action": "push",
        "target": {"mediaType": image.media_type, "digest": str(image.digest), "repository": image.repo,
                   "tag": image.tag, "url": f"http://registry.example/v2/{image.repo}/manifests/{image.digest}",
                   **target},
    }]}


def assert_hot(preheat: Preheat, image: Image, job: dict[str, Any]) -> None:
    """The job counted every blob and byte, and every origin has every blob in its cache."""
    assert job["state"] == "done", job
    progress = job["progress"]
    assert progress["blobs_total"] == progress["blobs_done"] == len(image.blobs), job
    assert progress["blobs_failed"] == progress["blobs_skipped"] == 0, job
    assert progress["bytes_total"] == progress["bytes_done"] == sum(image.blobs.values()), job
    herd = preheat.herd
    for origin in herd.origins:
        for digest in image.blobs:
            assert internal_head(origin.url, image.repo, digest) == 200, (origin.name, digest)
    fetches = backend_fetches(herd)
    for origin in herd.origins:
        for digest in image.blobs:
            r = http_request(f"{origin.url}/namespace/{quote(image.repo, safe='')}/blobs/{digest}", method="HEAD")
            assert r.status == 200, (origin.name, digest, r.status)
    assert backend_fetches(herd) == fetches  # answered from the caches


def test_registry_notification_preheats_every_blob_of_a_pushed_image(preheat: Preheat) -> None:
    herd = preheat.herd
    image = push_image(herd, "preheat/notified", "v1")
    wipe_origins(herd, image)
    before = backend_fetches(herd)

    envelope = notification(image)
    envelope["events"] += [
        {"action": "pull", "target": {"mediaType": OCI_MANIFEST, "digest": str(image.digest),
                                      "repository": image.repo}},
        {"action": "push", "target": {"mediaType": LAYER_TYPE, "digest": str(next(iter(image.blobs))),
                                      "repository": image.repo}},
    ]
    status, body = preheat.post("/registry/notifications", envelope)
    assert status == 200, body
    assert body["ignored"] == 2 and len(body["jobs"]) == 1, body
    job = preheat.finished(body["jobs"][0]["id"])
    assert_hot(preheat, image, job)
    # Each of the two owners fetched each blob from the backend once.
    assert backend_fetches(herd) - before == 2 * len(image.blobs)
    text = scrape(herd.proxy.url)
    assert metric_sum(text, "kraken_proxy_preheat_blobs_total", result="prefetched") >= len(image.blobs)
    assert metric_sum(text, "kraken_proxy_preheat_jobs_current", state="done") >= 1
    listed = json.loads(http_request(f"{preheat.url}/preheat").body)["jobs"]
    assert job["id"] in [j["id"] for j in listed]


def test_an_index_preheats_its_child_manifests_and_their_blobs(preheat: Preheat) -> None:
    herd = preheat.herd
    image = push_index(herd, "preheat/index", "multi")
    wipe_origins(herd, image)
    status, body = preheat.post("/registry/notifications", notification(image))
    assert status == 200, body
    assert_hot(preheat, image, preheat.finished(body["jobs"][0]["id"]))
    assert len(image.blobs) == 1 + 2 * 4  # the index, and each child's manifest, config and two layers


def test_harbor_and_kraken_prefetch_calls(preheat: Preheat) -> None:
    herd = preheat.herd
    # Harbor's Kraken driver: an envelope with Go's field names, always naming schema2.
    harbor = push_image(herd, "preheat/harbor", "h1")
    wipe_origins(herd, harbor)
    envelope = {"Events": [{"Id": "abc", "TimeStamp": "2026-12-05T00:00:00Z", "Action": "push", "Target": {
        "MediaType": DOCKER_MANIFEST, "Digest": str(harbor.digest), "Repository": harbor.repo,
        "Url": f"https://harbor.example/v2/{harbor.repo}/manifests/h1", "Tag": "h1"}}]}
    status, body = preheat.post("/registry/notifications", envelope)
    assert status == 200, body
    assert_hot(preheat, harbor, preheat.finished(body["jobs"][0]["id"]))

    # Kraken's prefetch: a tag with the registry host, resolved through build-index.
    image = push_image(herd, "preheat/prefetch", "p1")
    wipe_origins(herd, image)
    status, body = preheat.post("/proxy/v1/registry/prefetch",
                                {"tag": f"registry.example:5000/{image.repo}:p1", "trace_id": "t-1"})
    assert status == 200, body
    assert body["prefetched"] is True and body["trace_id"] == "t-1", body
    assert body["job"]["digest"] == str(image.digest), body
    assert_hot(preheat, image, preheat.finished(body["job"]["id"]))

    status, body = preheat.post("/proxy/v2/registry/prefetch", {"tag": f"registry.example/{image.repo}:nope"})
    assert status == 404 and body["prefetched"] is False, body
    status, body = preheat.post("/proxy/v1/registry/prefetch", {"tag": "no-host-or-tag"})
    assert status == 400, body


def test_bad_requests_are_refused_clearly(preheat: Preheat) -> None:
    image = Image("preheat/absent", "x", Digest.of_bytes(b"never pushed"), OCI_MANIFEST, {})
    for body, expected in [
        (b"{not json", "not JSON"),
        ([1, 2], "JSON object"),
        ({"foo": []}, '"events"'),
        ({"events": ["push"]}, "events[0]"),
        ({"events": [{"action": "push"}]}, "target"),
        (notification(image, digest="sha256:short"), "digest"),
        (notification(image, repository="Bad Name!"), "repository"),
    ]:
        status, answer = preheat.post("/registry/notifications", body)
        assert status == 400, (body, answer)
        assert expected in answer["error"], (body, answer)

    # A well-formed notification for a manifest nobody has: the job fails and says why.
    status, body = preheat.post("/registry/notifications", notification(image))
    assert status == 200, body
    job = preheat.finished(body["jobs"][0]["id"])
    assert job["state"] == "failed" and str(image.digest) in job["errors"][0], job
    assert http_request(f"{preheat.url}/preheat/nosuchjob").status == 404

    # The origin's own prefetch route answers 404 for a blob its backend lacks.
    origin = preheat.herd.origin
    r = http_request(f"{origin.url}/namespace/preheat%2Fabsent/blobs/{image.digest}/prefetch", method="POST")
    assert r.status == 404, r.body


def _from_other_address(port: int, method: str, path: str, headers: dict[str, str]) -> int:
    """A request from 127.0.0.2, which the second server's allow-list (127.0.0.1) leaves out."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_only_allowed_callers_with_the_token_may_preheat(preheat: Preheat) -> None:
    port = preheat.port
    assert _from_other_address(port, "POST", "/registry/notifications", AUTH) == 403
    assert _from_other_address(port, "POST", "/proxy/v1/registry/prefetch", AUTH) == 403
    assert _from_other_address(port, "GET", "/preheat", {}) == 403
    assert _from_other_address(port, "GET", "/health", {}) == 200
    envelope = {"events": []}
    assert preheat.post("/registry/notifications", envelope, headers={})[0] == 401
    status, _ = preheat.post("/registry/notifications", envelope, headers={"Authorization": "Bearer wrong"})
    assert status == 401
    assert preheat.post("/registry/notifications", envelope)[0] == 200
    text = scrape(preheat.herd.proxy.url)
    assert metric_sum(text, "kraken_http_denied_total", port=str(port)) >= 3
