"""Unit tests of build-index's parts (tag names, reference checking, the tag store, config)
against small in-memory fakes of the origins and the storage backend."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from kraken.backend import BackendError, BackendNotFound, BackendRouter, BlobInfo
from kraken.backend.router import Route
from kraken.buildindex.client import _reference_error
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.tags import Tag, TagError, parse_tag, validate_repo
from kraken.buildindex.tagstore import TagStore
from kraken.config import ConfigError, load_config
from kraken.core.digest import Digest
from kraken.devcluster import CONFIG_ROOT
from kraken.registry.manifest import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from kraken.registry.references import InvalidManifest, find_missing

# ---------------------------------------------------------------- fakes


class FakeOrigins:
    """Blobs by digest, as one namespace on the origins would hold them."""

    def __init__(self) -> None:
        self.blobs: dict[Digest, bytes] = {}
        self.stats: list[Digest] = []

    def add(self, data: bytes) -> Digest:
        digest = Digest.of_bytes(data)
        self.blobs[digest] = data
        return digest

    async def stat(self, digest: Digest) -> int | None:
        self.stats.append(digest)
        await asyncio.sleep(0)  # a request: other checks run meanwhile
        data = self.blobs.get(digest)
        return None if data is None else len(data)

    async def read(self, digest: Digest, max_size: int) -> bytes | None:
        return self.blobs.get(digest)


class FakeBackend:
    """A dict of name -> bytes that can be switched off to simulate an outage."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise BackendError("backend is down")

    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        self._check()
        data = self.objects.get(name)
        return None if data is None else BlobInfo(len(data))

    async def upload_bytes(self, namespace: str, name: str, data: bytes) -> None:
        self._check()
        self.objects[name] = data

    async def download_bytes(self, namespace: str, name: str) -> bytes:
        self._check()
        try:
            return self.objects[name]
        except KeyError:
            raise BackendNotFound(name) from None

    async def list(self, prefix: str) -> list[str]:
        self._check()
        return sorted(n for n in self.objects if n.startswith(prefix))


def open_store(root: Path, backend: FakeBackend, ttl: float) -> TagStore:
    """A tag store whose only backend serves every repository."""
    return TagStore(root, BackendRouter([Route(re.compile(".*"), backend, "fake")]), ttl=ttl)  # type: ignore[arg-type]


def image_manifest(config: Digest, layers: list[Digest], media_type: str = DOCKER_MANIFEST) -> bytes:
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": str(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1, "digest": str(d)}
                   for d in layers],
    }).encode()


def index_manifest(children: list[Digest]) -> bytes:
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "size": 10, "digest": str(d)} for d in children],
    }).encode()


def digest_of(text: str) -> Digest:
    return Digest.of_bytes(text.encode())


# ---------------------------------------------------------------- tag names


@pytest.mark.parametrize("value, repo, name", [
    ("test/x:latest", "test/x", "latest"),
    ("a:b", "a", "b"),
    ("library/ubuntu-base.img/x_y:V1.2-rc_3", "library/ubuntu-base.img/x_y", "V1.2-rc_3"),
    ("a__b/c--d:_t", "a__b/c--d", "_t"),
    ("r:" + "t" * 128, "r", "t" * 128),
])
def test_parse_tag_accepts_valid_names(value: str, repo: str, name: str) -> None:
    assert parse_tag(value) == Tag(repo, name)
    assert str(parse_tag(value)) == value


@pytest.mark.parametrize("value", [
    "latest", "test/x", "test/x:", ":latest", "Test/x:latest", "test//x:latest", "/test:x", "test/:x",
    "../x:latest", "test/x:.hidden", "test/x:-dash", "test/x:a/b", "localhost:5000/x:latest",
    "test/x:" + "t" * 129, "a" * 256 + ":t", "test/x:la test", "test/x:a%2Fb",
])
def test_parse_tag_rejects_invalid_names(value: str) -> None:
    with pytest.raises(TagError):
        parse_tag(value)


def test_validate_repo() -> None:
    assert validate_repo("test/x") == "test/x"
    for bad in ("", "x/", "X", "a..b", "a/../b"):
        with pytest.raises(TagError):
            validate_repo(bad)


# ---------------------------------------------------------------- reference checking


async def check(origins: FakeOrigins, root: Digest, max_size: int = 1 << 20, concurrency: int = 4,
                max_references: int = 200) -> Digest | None:
    return await find_missing(origins, root, max_manifest_size=max_size, concurrency=concurrency,
                              max_references=max_references)


async def test_find_missing_all_present() -> None:
    origins = FakeOrigins()
    config, layer = origins.add(b"{}"), origins.add(b"layer")
    manifest = origins.add(image_manifest(config, [layer]))
    assert await check(origins, manifest) is None
    assert set(origins.stats) == {manifest, config, layer}


async def test_find_missing_reports_the_first_missing_blob_and_stops() -> None:
    origins = FakeOrigins()
    config = origins.add(b"{}")
    gone = [digest_of(f"gone-{i}") for i in range(100)]
    manifest = origins.add(image_manifest(config, gone))
    assert await check(origins, manifest, concurrency=1) == gone[0]
    assert len(origins.stats) <= 4  # the manifest, then one at a time until the first miss


async def test_find_missing_root_manifest_missing() -> None:
    root = digest_of("nothing")
    assert await check(FakeOrigins(), root) == root


async def test_find_missing_walks_nested_indexes() -> None:
    origins = FakeOrigins()
    config = origins.add(b"{}")
    present_child = origins.add(image_manifest(config, [origins.add(b"layer-a")], OCI_MANIFEST))
    missing_layer = digest_of("layer-b")
    child_missing_layer = origins.add(image_manifest(config, [missing_layer], OCI_MANIFEST))
    inner_index = origins.add(index_manifest([child_missing_layer]))
    root = origins.add(index_manifest([present_child, inner_index]))
    assert await check(origins, root, concurrency=2) == missing_layer
    absent_child = digest_of("absent child")
    assert await check(origins, origins.add(index_manifest([present_child, absent_child]))) == absent_child


async def test_find_missing_rejects_invalid_manifests() -> None:
    origins = FakeOrigins()
    not_json = origins.add(b"not json")
    with pytest.raises(InvalidManifest, match="not valid JSON"):
        await check(origins, not_json)
    big = origins.add(image_manifest(origins.add(b"{}"), []))
    with pytest.raises(InvalidManifest, match="limit"):
        await check(origins, big, max_size=10)
    bad_child = origins.add(b'{"schemaVersion": 1}')
    with pytest.raises(InvalidManifest, match=str(bad_child)):
        await check(origins, origins.add(index_manifest([bad_child])))


async def test_find_missing_refuses_too_many_references_before_any_stat() -> None:
    origins = FakeOrigins()
    manifest = origins.add(image_manifest(origins.add(b"{}"), [digest_of(f"l{i}") for i in range(10)]))
    with pytest.raises(InvalidManifest, match="11 references, over the limit of 5"):
        await check(origins, manifest, max_references=5)
    assert origins.stats == [manifest]


async def test_find_missing_rejects_content_not_matching_digest() -> None:
    origins = FakeOrigins()
    real = image_manifest(origins.add(b"{}"), [])
    claimed = digest_of("something else")
    origins.blobs[claimed] = real
    with pytest.raises(InvalidManifest, match="does not match"):
        await check(origins, claimed)


# ---------------------------------------------------------------- tag store


TAG = Tag("test/x", "latest")
D1, D2, D3 = digest_of("one"), digest_of("two"), digest_of("three")


async def test_tagstore_put_writes_through_to_backend(tmp_path: Path) -> None:
    backend = FakeBackend()
    store = open_store(tmp_path, backend, 0)
    await store.put(TAG, D1)
    assert backend.objects["test/x:latest"] == str(D1).encode()
    lookup = await store.get(TAG)
    assert (lookup.digest, lookup.source) == (D1, "backend")
    assert (await store.get(Tag("test/x", "other"))).digest is None


async def test_tagstore_ttl_zero_sees_other_writers_immediately(tmp_path: Path) -> None:
    backend = FakeBackend()
    node_a = open_store(tmp_path / "a", backend, 0)
    node_b = open_store(tmp_path / "b", backend, 0)
    await node_a.put(TAG, D1)
    assert (await node_b.get(TAG)).digest == D1
    await node_a.put(TAG, D2)
    assert (await node_b.get(TAG)).digest == D2


async def test_tagstore_ttl_serves_cache_but_never_older_than_own_put(tmp_path: Path) -> None:
    backend = FakeBackend()
    store = open_store(tmp_path, backend, 3600)
    await store.put(TAG, D1)
    backend.objects["test/x:latest"] = str(D2).encode()  # another node re-pushed
    lookup = await store.get(TAG)
    assert (lookup.digest, lookup.source) == (D1, "cache")  # within the TTL, by design
    await store.put(TAG, D3)
    lookup = await store.get(TAG)
    assert (lookup.digest, lookup.source) == (D3, "cache")


async def test_tagstore_falls_back_to_disk_cache_when_backend_down(tmp_path: Path) -> None:
    backend = FakeBackend()
    await open_store(tmp_path, backend, 0).put(TAG, D1)
    restarted = open_store(tmp_path, backend, 0)
    backend.down = True
    lookup = await restarted.get(TAG)
    assert (lookup.digest, lookup.source) == (D1, "fallback")
    with pytest.raises(BackendError):
        await restarted.get(Tag("test/x", "never-seen"))


async def test_tagstore_read_refreshes_cache_for_fallback(tmp_path: Path) -> None:
    backend = FakeBackend()
    await open_store(tmp_path / "writer", backend, 0).put(TAG, D1)
    reader = open_store(tmp_path / "reader", backend, 0)
    assert (await reader.get(TAG)).digest == D1
    backend.objects["test/x:latest"] = str(D2).encode()
    assert (await reader.get(TAG)).digest == D2
    backend.down = True
    assert (await open_store(tmp_path / "reader", backend, 0).get(TAG)).digest == D2


async def test_tagstore_failed_put_leaves_backend_authoritative(tmp_path: Path) -> None:
    backend = FakeBackend()
    store = open_store(tmp_path, backend, 3600)
    await store.put(TAG, D1)
    backend.down = True
    with pytest.raises(BackendError):
        await store.put(TAG, D2)
    backend.down = False
    backend.objects["test/x:latest"] = str(D3).encode()
    assert (await store.get(TAG)).digest == D3  # the failed PUT dropped the cached D1


async def test_tagstore_read_racing_a_put_does_not_cache_the_old_digest(tmp_path: Path) -> None:
    """A read that fetched D1 from the backend and finishes after a local PUT of D2 must not
    overwrite the cache with D1."""
    backend = FakeBackend()
    store = open_store(tmp_path, backend, 3600)
    backend.objects["test/x:latest"] = str(D1).encode()
    original = backend.download_bytes

    async def download_then_put(namespace: str, name: str) -> bytes:
        data = await original(namespace, name)
        await store.put(TAG, D2)  # lands while the read is between backend and cache
        return data

    backend.download_bytes = download_then_put  # type: ignore[method-assign]
    assert (await store.get(TAG)).digest == D1
    backend.download_bytes = original  # type: ignore[method-assign]
    lookup = await store.get(TAG)
    assert (lookup.digest, lookup.source) == (D2, "cache")
    backend.down = True
    assert (await open_store(tmp_path, backend, 0).get(TAG)).digest == D2


async def test_tagstore_list_filters_invalid_names(tmp_path: Path) -> None:
    backend = FakeBackend()
    store = open_store(tmp_path, backend, 0)
    for tag in ("test/x:b", "test/x:a", "test/y:a", "other:1"):
        await store.put(parse_tag(tag), D1)
    backend.objects["test/x:.junk"] = b"x"
    assert await store.list("test/") == ["test/x:a", "test/x:b", "test/y:a"]
    assert await store.list("test/x:") == ["test/x:a", "test/x:b"]
    assert await store.list("") == ["other:1", "test/x:a", "test/x:b", "test/y:a"]


async def test_tagstore_routes_repositories_to_their_backend(tmp_path: Path) -> None:
    library, rest = FakeBackend(), FakeBackend()
    router = BackendRouter([Route(re.compile("library/.*"), library, "fake"),  # type: ignore[arg-type]
                            Route(re.compile(".*"), rest, "fake")])  # type: ignore[arg-type]
    store = TagStore(tmp_path, router, ttl=0)  # type: ignore[list-item]
    await store.put(parse_tag("library/a:1"), D1)
    await store.put(parse_tag("team/b:2"), D2)
    assert list(library.objects) == ["library/a:1"]
    assert list(rest.objects) == ["team/b:2"]
    rest.objects["library/a:stale"] = str(D3).encode()  # not the backend library/ routes to
    assert await store.list("") == ["library/a:1", "team/b:2"]
    assert await store.list("library/a:") == ["library/a:1"]
    assert (await store.get(parse_tag("library/a:stale"))).digest is None


# ---------------------------------------------------------------- config and client errors


def test_development_config_loads() -> None:
    config = load_config(BuildIndexConfig, CONFIG_ROOT / "build-index" / "development.yaml")
    assert config.listen.port == 15004
    assert config.origins.hosts == ["localhost:15002"]
    assert config.cache_ttl == 0
    (entry,) = config.backends
    assert entry.backend.kind == "testfs"
    assert (entry.namespace, entry.backend.config.addr, entry.backend.config.name_path) == (
        ".*", "localhost:14000", "docker_tag")


@pytest.mark.parametrize("override, message", [
    ({"verify_concurrency": 0}, "verify_concurrency"),
    ({"max_manifest_references": 0}, "max_manifest_references"),
    ({"cache_ttl": "soon"}, "cache_ttl"),
    ({"cache_tll": "5s"}, "unknown key"),
])
def test_config_rejects_bad_values(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(BuildIndexConfig, CONFIG_ROOT / "build-index" / "development.yaml", override)


def test_reference_error_from_bodies() -> None:
    d = digest_of("x")
    err = _reference_error(json.dumps({"error": "missing stuff", "missing": [str(d)]}))
    assert (str(err), err.missing) == ("missing stuff", [d])
    err = _reference_error("<html>bad request</html>")  # e.g. from a proxy in between
    assert (str(err), err.missing) == ("<html>bad request</html>", [])
