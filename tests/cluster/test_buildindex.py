"""build-index against real testfs and origin processes.

One build-index runs as a real process (``python -m kraken build-index`` with the
development config, as ``make devcluster`` starts it); further nodes on the same backend run
in-process, so the tests can check what every reader sees after a tag is re-pushed.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestServer

from kraken.buildindex.client import BuildIndexClient, TagReferenceError
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.server import create_buildindex_app
from kraken.config import load_config
from kraken.core.digest import Digest
from kraken.devcluster import CONFIG_ROOT, HerdPorts, Supervisor, free_port, herd_processes, write_overlay
from kraken.http.client import HttpClient, create_client
from kraken.http.config import HttpClientConfig
from kraken.origin.client import OriginCluster
from kraken.registry.manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from kraken.ring import RingConfig
from tests.support.metrics import metric_sum


@dataclass
class Cluster:
    supervisor: Supervisor
    workdir: Path
    ports: HerdPorts

    @property
    def testfs(self) -> str:
        return f"127.0.0.1:{self.ports.testfs}"

    @property
    def origin(self) -> str:
        return f"127.0.0.1:{self.ports.origin}"

    @property
    def build_index(self) -> str:
        return f"127.0.0.1:{self.ports.build_index}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """testfs, origin and build-index processes wired as in the devcluster (no proxy)."""
    workdir = tmp_path_factory.mktemp("buildindex")
    ports = HerdPorts.free()
    supervisor = Supervisor(workdir)
    try:
        for proc in herd_processes(workdir, ports):
            if proc.component != "proxy":
                supervisor.start(proc)
        yield Cluster(supervisor, workdir, ports)
    finally:
        supervisor.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = create_client(HttpClientConfig(retries=1, backoff=0.05))
    yield client
    await client.close()


@pytest.fixture
def origins(cluster: Cluster, http: HttpClient) -> OriginCluster:
    return OriginCluster(RingConfig(hosts=[cluster.origin]), http)


@pytest.fixture
def node(cluster: Cluster, http: HttpClient) -> BuildIndexClient:
    """A client of the build-index process."""
    return BuildIndexClient(cluster.build_index, http)


NodeFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def start_node(cluster: Cluster, tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """Start an in-process build-index from the development config with ``overrides``."""
    servers: list[TestServer] = []

    async def start(store: str = "node", **overrides: object) -> TestServer:
        settings = {
            "store": {"root": str(tmp_path / store)},
            "origins": {"hosts": [cluster.origin], "max_replica": 1},
            "backends": [{"namespace": ".*", "backend": {
                "testfs": {"addr": cluster.testfs, "name_path": "docker_tag"}}}],
            **overrides,
        }
        path = write_overlay(tmp_path / f"{store}-{len(servers)}.yaml",
                             CONFIG_ROOT / "build-index" / "development.yaml", settings)
        server = TestServer(create_buildindex_app(load_config(BuildIndexConfig, path)))
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


def addr(server: TestServer) -> str:
    return f"{server.host}:{server.port}"


# ---------------------------------------------------------------- images on the origins


def image_manifest(config: Digest, layers: list[Digest], media_type: str = DOCKER_MANIFEST) -> bytes:
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": str(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 5, "digest": str(d)}
                   for d in layers],
    }).encode()


def index_manifest(children: list[Digest], media_type: str = OCI_INDEX) -> bytes:
    child_type = OCI_MANIFEST if media_type == OCI_INDEX else DOCKER_MANIFEST
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [{"mediaType": child_type, "size": 100, "digest": str(d),
                       "platform": {"architecture": "amd64", "os": "linux"}} for d in children],
    }).encode()


async def push(origins: OriginCluster, repo: str, data: bytes) -> Digest:
    digest = Digest.of_bytes(data)
    await origins.upload_bytes(repo, digest, data)
    return digest


async def push_image(origins: OriginCluster, repo: str, seed: str, media_type: str = DOCKER_MANIFEST) -> Digest:
    """Push a config, a layer and the manifest naming them; returns the manifest digest."""
    config = await push(origins, repo, f'{{"seed": "{seed}"}}'.encode())
    layer = await push(origins, repo, f"layer of {seed}".encode())
    return await push(origins, repo, image_manifest(config, [layer], media_type))


def absent(seed: str) -> Digest:
    return Digest.of_bytes(f"never pushed: {seed}".encode())


async def tag_link(http: HttpClient, cluster: Cluster, repo: str, tag: str) -> str | None:
    """The tag as the backend (testfs, Docker-distribution layout) holds it."""
    path = f"docker/registry/v2/repositories/{repo}/_manifests/tags/{tag}/current/link"
    resp = await http.request("GET", f"http://{cluster.testfs}/files/{path}", ok=(200, 404))
    try:
        return (await resp.text()) if resp.status == 200 else None
    finally:
        resp.release()


async def status_and_body(http: HttpClient, method: str, url: str) -> tuple[int, str]:
    resp = await http.request(method, url, ok=(200, 400, 404, 503))
    try:
        return resp.status, await resp.text()
    finally:
        resp.release()


# ---------------------------------------------------------------- tests


async def test_put_get_round_trip(cluster: Cluster, http: HttpClient, origins: OriginCluster,
                                  node: BuildIndexClient) -> None:
    digest = await push_image(origins, "test/x", "round trip")
    await node.put_tag("test/x:latest", digest)

    assert await node.get_tag("test/x:latest") == digest
    # Written through: the backend holds the tag when the PUT returns.
    assert await tag_link(http, cluster, "test/x", "latest") == str(digest)

    base = f"http://{cluster.build_index}"
    resp = await http.request("GET", f"{base}/tags/test%2Fx:latest")
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert await resp.text() == str(digest)
    resp.release()
    assert await status_and_body(http, "GET", f"{base}/tags/test/x:latest") == (200, str(digest))
    assert (await status_and_body(http, "HEAD", f"{base}/tags/test%2Fx:latest"))[0] == 200
    assert (await status_and_body(http, "HEAD", f"{base}/tags/test%2Fx:nope"))[0] == 404


async def test_unknown_tag_is_404(cluster: Cluster, http: HttpClient, node: BuildIndexClient) -> None:
    assert await node.get_tag("test/unknown:latest") is None
    status, _ = await status_and_body(http, "GET", f"http://{cluster.build_index}/tags/test%2Funknown:latest")
    assert status == 404


async def test_repushed_tag_resolves_to_new_digest_everywhere(
    cluster: Cluster, http: HttpClient, origins: OriginCluster, node: BuildIndexClient, start_node: NodeFactory
) -> None:
    tag = "test/retag:latest"
    first, second, third = [await push_image(origins, "test/retag", f"retag {i}") for i in range(3)]
    other = BuildIndexClient(addr(await start_node("other")), http)

    await node.put_tag(tag, first)
    assert await other.get_tag(tag) == first  # the other node has now cached `first`

    await other.put_tag(tag, second)
    assert await node.get_tag(tag) == second
    assert await other.get_tag(tag) == second

    await node.put_tag(tag, third)
    assert await other.get_tag(tag) == third
    assert await tag_link(http, cluster, "test/retag", "latest") == str(third)

    # A restarted process reads the backend, not what it had before.
    await asyncio.to_thread(cluster.supervisor.restart, "build-index")
    assert await node.get_tag(tag) == third
    await other.put_tag(tag, first)
    assert await node.get_tag(tag) == first


async def test_restarted_node_with_cache_ttl_sees_tag(
    http: HttpClient, origins: OriginCluster, start_node: NodeFactory
) -> None:
    """A node allowed to cache still answers its own latest PUT, and a restart keeps the tag."""
    tag = "test/ttl:v1"
    first, second = [await push_image(origins, "test/ttl", f"ttl {i}") for i in range(2)]
    server = await start_node("ttl", cache_ttl="1h")
    client = BuildIndexClient(addr(server), http)
    await client.put_tag(tag, first)
    assert await client.get_tag(tag) == first
    await client.put_tag(tag, second)
    assert await client.get_tag(tag) == second
    await server.close()

    restarted = BuildIndexClient(addr(await start_node("ttl", cache_ttl="1h")), http)
    assert await restarted.get_tag(tag) == second


async def test_manifest_with_missing_layer_is_refused(
    cluster: Cluster, http: HttpClient, origins: OriginCluster, node: BuildIndexClient
) -> None:
    repo = "test/missing-layer"
    config = await push(origins, repo, b'{"missing": "layer"}')
    present = await push(origins, repo, b"present layer")
    gone = sorted([absent("layer 1"), absent("layer 2")])
    manifest = await push(origins, repo, image_manifest(config, [present, *gone], OCI_MANIFEST))

    with pytest.raises(TagReferenceError) as excinfo:
        await node.put_tag(f"{repo}:v1", manifest)
    assert len(excinfo.value.missing) == 1 and excinfo.value.missing[0] in gone  # the first one found

    status, body = await status_and_body(
        http, "PUT", f"http://{cluster.build_index}/tags/{quote(repo, safe='')}:v1/digest/{manifest}")
    assert status == 400
    missing = json.loads(body)["missing"]
    assert len(missing) == 1 and missing[0] in [str(d) for d in gone]
    assert await node.get_tag(f"{repo}:v1") is None
    assert await tag_link(http, cluster, repo, "v1") is None


async def test_missing_manifest_is_refused(origins: OriginCluster, node: BuildIndexClient) -> None:
    manifest = absent("manifest")
    with pytest.raises(TagReferenceError) as excinfo:
        await node.put_tag("test/no-manifest:v1", manifest)
    assert excinfo.value.missing == [manifest]


@pytest.mark.parametrize("index_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
async def test_index_is_checked_recursively(
    cluster: Cluster, http: HttpClient, origins: OriginCluster, node: BuildIndexClient, index_type: str
) -> None:
    repo = "test/multiarch"
    child_type = OCI_MANIFEST if index_type == OCI_INDEX else DOCKER_MANIFEST
    amd64 = await push_image(origins, repo, f"amd64 {index_type}", child_type)
    arm64 = await push_image(origins, repo, f"arm64 {index_type}", child_type)

    missing_child = absent(f"child {index_type}")
    broken = await push(origins, repo, index_manifest([amd64, missing_child], index_type))
    with pytest.raises(TagReferenceError) as excinfo:
        await node.put_tag(f"{repo}:broken", broken)
    assert excinfo.value.missing == [missing_child]
    assert await tag_link(http, cluster, repo, "broken") is None

    config = await push(origins, repo, f'{{"child": "{index_type}"}}'.encode())
    missing_layer = absent(f"layer of child {index_type}")
    child_missing_layer = await push(origins, repo, image_manifest(config, [missing_layer], child_type))
    nested = await push(origins, repo, index_manifest([arm64, child_missing_layer], index_type))
    with pytest.raises(TagReferenceError) as excinfo:
        await node.put_tag(f"{repo}:nested", nested)
    assert excinfo.value.missing == [missing_layer]

    good = await push(origins, repo, index_manifest([amd64, arm64], index_type))
    await node.put_tag(f"{repo}:good", good)
    assert await node.get_tag(f"{repo}:good") == good


async def origin_blob_heads(http: HttpClient, cluster: Cluster) -> float:
    """Blob HEADs the origin has answered so far (its request counter, any status)."""
    resp = await http.request("GET", f"http://{cluster.origin}/metrics")
    try:
        text = await resp.text()
    finally:
        resp.release()
    return metric_sum(text, "kraken_http_requests_total", method="HEAD", route="/namespace/{ns}/blobs/{digest}")


async def test_reference_checks_are_capped_and_stop_at_the_first_missing_blob(
    cluster: Cluster, http: HttpClient, origins: OriginCluster, node: BuildIndexClient
) -> None:
    repo = "test/amplified"
    config = await push(origins, repo, b'{"amplified": true}')
    layers = [absent(f"amplified layer {i}") for i in range(2000)]
    huge = await push(origins, repo, image_manifest(config, layers, OCI_MANIFEST))
    before = await origin_blob_heads(http, cluster)
    with pytest.raises(TagReferenceError) as excinfo:
        await node.put_tag(f"{repo}:huge", huge)
    assert excinfo.value.missing == [] and "2001 references, over the limit of 200" in str(excinfo.value)
    assert await origin_blob_heads(http, cluster) - before <= 1  # the manifest's own; none of its layers

    within_cap = await push(origins, repo, image_manifest(config, layers[:199], OCI_MANIFEST))
    before = await origin_blob_heads(http, cluster)
    with pytest.raises(TagReferenceError) as excinfo:
        await node.put_tag(f"{repo}:many", within_cap)
    assert len(excinfo.value.missing) == 1 and excinfo.value.missing[0] in layers
    assert await origin_blob_heads(http, cluster) - before <= 1 + 2 * 16  # not 200: at most two rounds in flight
    assert await node.get_tag(f"{repo}:many") is None


async def test_invalid_manifest_is_refused(origins: OriginCluster, node: BuildIndexClient) -> None:
    not_a_manifest = await push(origins, "test/invalid", b'{"schemaVersion": 1, "name": "old"}')
    with pytest.raises(TagReferenceError) as excinfo:
        await node.put_tag("test/invalid:v1", not_a_manifest)
    assert excinfo.value.missing == []
    assert "schemaVersion" in str(excinfo.value)


@pytest.mark.parametrize("tag, digest", [
    ("test%2Fx", "sha256:" + "a" * 64),                  # no ":tag"
    ("Test%2Fx:latest", "sha256:" + "a" * 64),           # uppercase repository
    ("test%2Fx:.hidden", "sha256:" + "a" * 64),          # tag starts with "."
    ("test%2F..%2Fx:latest", "sha256:" + "a" * 64),      # path traversal
    ("test%2Fx:" + "t" * 129, "sha256:" + "a" * 64),     # tag too long
    ("test%2Fx:latest", "sha256:" + "z" * 64),           # not hex
    ("test%2Fx:latest", "sha256:abc"),                   # too short
    ("test%2Fx:latest", "md5:" + "a" * 32),              # unsupported algorithm
    ("test%2Fx:latest", "sha256:" + "a" * 63 + "%0A"),   # "$" matched before a trailing newline
    ("x" * 5000 + ":latest", "sha256:" + "a" * 64),      # repository over 255 characters
    ("test%00x:latest", "sha256:" + "a" * 64),           # NUL
])
async def test_bad_tag_or_digest_is_400(cluster: Cluster, http: HttpClient, tag: str, digest: str) -> None:
    status, body = await status_and_body(http, "PUT", f"http://{cluster.build_index}/tags/{tag}/digest/{digest}")
    assert status == 400
    assert "error" in json.loads(body)


async def test_bad_tag_on_read_is_400(cluster: Cluster, http: HttpClient) -> None:
    base = f"http://{cluster.build_index}"
    assert (await status_and_body(http, "GET", f"{base}/tags/no-colon"))[0] == 400
    assert (await status_and_body(http, "GET", f"{base}/repositories/Bad%2FRepo/tags"))[0] == 400
    assert (await status_and_body(http, "GET", f"{base}/repositories/test%2Fx/tags?limit=0"))[0] == 400
    assert (await status_and_body(http, "GET", f"{base}/repositories/test%2Fx/tags?offset=-1"))[0] == 400


async def test_list_endpoints(cluster: Cluster, http: HttpClient, origins: OriginCluster,
                              node: BuildIndexClient) -> None:
    names = ["test/lists:v2", "test/lists:v1", "test/lists:latest", "test/lists/sub:v1", "test/listsx:v1"]
    for name in names:
        repo = name.rpartition(":")[0]
        await node.put_tag(name, await push_image(origins, repo, name))

    assert await node.list_repository("test/lists") == ["latest", "v1", "v2"]
    assert await node.list_repository("test/lists/sub") == ["v1"]
    assert await node.list_repository("test/empty") == []
    assert await node.list_prefix("test/lists:") == ["test/lists:latest", "test/lists:v1", "test/lists:v2"]
    assert await node.list_prefix("test/lists") == sorted(names)
    assert await node.list_prefix("test/lists/") == ["test/lists/sub:v1"]
    everything = await node.list_prefix("")
    assert set(names) <= set(everything)
    assert everything == sorted(everything)

    base = f"http://{cluster.build_index}/repositories/test%2Flists/tags"
    for query, expected in [("limit=2", ["latest", "v1"]), ("limit=2&offset=2", ["v2"]),
                            ("offset=1", ["v1", "v2"]), ("offset=5", [])]:
        status, body = await status_and_body(http, "GET", f"{base}?{query}")
        assert (status, json.loads(body)) == (200, {"result": expected})
    status, body = await status_and_body(http, "GET", f"http://{cluster.build_index}/list/test%2Flists%2F")
    assert (status, json.loads(body)) == (200, {"result": ["test/lists/sub:v1"]})


async def test_readiness_and_metrics(cluster: Cluster, http: HttpClient, origins: OriginCluster,
                                     node: BuildIndexClient, start_node: NodeFactory) -> None:
    base = f"http://{cluster.build_index}"
    assert (await status_and_body(http, "GET", f"{base}/readiness"))[0] == 200
    digest = await push_image(origins, "test/metrics", "metrics")
    await node.put_tag("test/metrics:v1", digest)
    assert await node.get_tag("test/metrics:v1") == digest
    _, metrics = await status_and_body(http, "GET", f"{base}/metrics")
    assert 'kraken_buildindex_tag_puts_total{result="ok"}' in metrics
    assert 'kraken_buildindex_tag_gets_total{result="backend"}' in metrics

    dead = {"backends": [{"namespace": ".*", "backend": {
        "testfs": {"addr": f"127.0.0.1:{free_port()}", "name_path": "docker_tag"}}}]}
    no_backend = await start_node("no-backend", **dead)
    status, body = await status_and_body(http, "GET", f"http://{addr(no_backend)}/readiness")
    assert status == 503 and "not ready" in body
    status, body = await status_and_body(http, "GET", f"http://{addr(no_backend)}/tags/test%2Fmetrics:v1")
    assert status == 503 and "backend unavailable" in body


async def test_unreachable_origins_is_503(http: HttpClient, start_node: NodeFactory) -> None:
    server = await start_node("no-origin", origins={"hosts": [f"127.0.0.1:{free_port()}"], "max_replica": 1})
    status, body = await status_and_body(
        http, "PUT", f"http://{addr(server)}/tags/test%2Fx:v1/digest/{absent('origin down')}")
    assert status == 503 and "origins unavailable" in body
