"""The registry v2 protocol end to end over HTTP, against a small local-disk storage.

These tests pin the wire behaviour real clients rely on (status codes, headers, error codes,
upload variants); the proxy's own tests check the same protocol over origins and build-index.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from kraken.core.digest import Digest
from kraken.http.app import create_app
from kraken.registry.app import add_registry_routes
from kraken.registry.manifest import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from kraken.registry.uploads import UploadLimits
from kraken.store.cas import CAStore
from tests.support.localstorage import LocalStorage
from tests.support.waiting import until


class Registry:
    def __init__(self, server: TestServer, session: aiohttp.ClientSession, storage: LocalStorage, cas: CAStore) -> None:
        self.server = server
        self.session = session
        self.storage = storage
        self.cas = cas

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def request(self, method: str, path_or_url: str, **kwargs) -> aiohttp.client._RequestContextManager:
        url = path_or_url if path_or_url.startswith("http") else self.url(path_or_url)
        return self.session.request(method, url, **kwargs)

    async def push_blob(self, repo: str, data: bytes) -> Digest:
        digest = Digest.of_bytes(data)
        async with self.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": str(digest)}, data=data) as r:
            assert r.status == 201, await r.text()
        return digest

    async def push_manifest(self, repo: str, ref: str, doc: dict, media_type: str = OCI_MANIFEST) -> tuple[int, dict]:
        """PUT a manifest; the status and the JSON body (``{}`` when there is none)."""
        raw = json.dumps(doc).encode()
        async with self.request("PUT", f"/v2/{repo}/manifests/{ref}", data=raw,
                                headers={"Content-Type": media_type}) as r:
            body = await r.read()
            return r.status, json.loads(body) if body else {}

    def staged_blobs(self) -> list[Path]:
        return [p for p in self.cas.cache_dir.rglob("*") if p.is_file()]


async def _start(tmp_path: Path, read_only: bool, **kwargs) -> tuple[TestServer, LocalStorage, CAStore]:
    storage = LocalStorage(tmp_path / "storage")
    cas = CAStore(tmp_path / "staging")
    app = create_app("registry-test")
    add_registry_routes(app, storage, read_only=read_only, uploads=None if read_only else cas, **kwargs)
    server = TestServer(app)
    await server.start_server()
    return server, storage, cas


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    server, storage, cas = await _start(tmp_path, read_only=False, max_manifest_size=4096)
    async with aiohttp.ClientSession() as session:
        yield Registry(server, session, storage, cas)
    await server.close()


def image(config: Digest, config_size: int, layers: list[tuple[Digest, int]], media_type: str = OCI_MANIFEST) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": str(d), "size": s}
                   for d, s in layers],
    }


async def push_image(reg: Registry, repo: str, tag: str, media_type: str = OCI_MANIFEST) -> tuple[Digest, bytes]:
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = b"layer-bytes" * 100
    cd = await reg.push_blob(repo, config)
    ld = await reg.push_blob(repo, layer)
    doc = image(cd, len(config), [(ld, len(layer))], media_type)
    raw = json.dumps(doc).encode()
    async with reg.request("PUT", f"/v2/{repo}/manifests/{tag}", data=raw, headers={"Content-Type": media_type}) as r:
        assert r.status == 201, await r.text()
        assert r.headers["Docker-Content-Digest"] == str(Digest.of_bytes(raw))
    return Digest.of_bytes(raw), raw


async def error_code(r: aiohttp.ClientResponse) -> str:
    return (await r.json())["errors"][0]["code"]


# ---- base, versions, names ---------------------------------------------------------------------

async def test_base_endpoint_and_api_version_everywhere(registry: Registry) -> None:
    for path in ("/v2/", "/v2"):
        async with registry.request("GET", path) as r:
            assert r.status == 200 and await r.json() == {}
            assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    async with registry.request("GET", "/v2/nothing/here/at/all") as r:
        assert r.status == 404 and r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    async with registry.request("GET", f"/v2/a/blobs/{Digest.of_bytes(b'none')}") as r:
        assert r.status == 404 and await error_code(r) == "BLOB_UNKNOWN"
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("name", ["UPPER/case", "a/../b", "..", "a%20b", "a:b", "a_-b", "a/.hidden"])
async def test_invalid_names_rejected_everywhere(registry: Registry, name: str) -> None:
    d = Digest.of_bytes(b"x")
    for method, path in [
        ("GET", f"/v2/{name}/tags/list"),
        ("GET", f"/v2/{name}/manifests/latest"),
        ("PUT", f"/v2/{name}/manifests/latest"),
        ("HEAD", f"/v2/{name}/blobs/{d}"),
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("POST", f"/v2/{name}/blobs/uploads/?digest={d}"),
    ]:
        url = URL(registry.url("/") + path.lstrip("/"), encoded=True)  # sent as is, not normalised
        async with registry.session.request(method, url, data=b"x") as r:
            assert r.status == 400, (method, path, r.status)
            assert method == "HEAD" or await error_code(r) == "NAME_INVALID"
    assert registry.staged_blobs() == [] and list(registry.storage.root.iterdir()) == []
    assert list(registry.cas.upload_dir.iterdir()) == []


# ---- blobs: uploads ------------------------------------------------------------------------------

async def test_monolithic_post_and_pull(registry: Registry) -> None:
    data = b"hello blob" * 1000
    digest = await registry.push_blob("test/x", data)
    async with registry.request("HEAD", f"/v2/test/x/blobs/{digest}") as r:
        assert r.status == 200
        assert int(r.headers["Content-Length"]) == len(data)
        assert r.headers["Docker-Content-Digest"] == str(digest)
    async with registry.request("GET", f"/v2/test/x/blobs/{digest}") as r:
        assert r.status == 200 and await r.read() == data
    assert registry.staged_blobs() == []  # the verified copy was handed over and deleted


async def test_chunked_upload_with_content_range(registry: Registry) -> None:
    data = bytes(range(256)) * 40
    digest = Digest.of_bytes(data)
    async with registry.request("POST", "/v2/test/x/blobs/uploads/", data=b"") as r:
        assert r.status == 202
        location = r.headers["Location"]
        assert location.startswith("http://") and "/v2/test/x/blobs/uploads/" in location
        assert r.headers["Range"] == "0-0"
        assert location.endswith(r.headers["Docker-Upload-UUID"])
    chunks = [data[:1000], data[1000:5000], data[5000:]]
    offset = 0
    for chunk in chunks:
        headers = {"Content-Range": f"{offset}-{offset + len(chunk) - 1}", "Content-Type": "application/octet-stream"}
        async with registry.request("PATCH", location, data=chunk, headers=headers) as r:
            assert r.status == 202, await r.text()
            offset += len(chunk)
            assert r.headers["Range"] == f"0-{offset - 1}"
            location = r.headers["Location"]
    # a chunk out of order is refused with 416 and the current range
    async with registry.request("PATCH", location, data=b"zz", headers={"Content-Range": "5-6"}) as r:
        assert r.status == 416 and await error_code(r) == "RANGE_INVALID"
        assert r.headers["Range"] == f"0-{len(data) - 1}"
    async with registry.request("PATCH", location, data=b"zz", headers={"Content-Range": "garbage"}) as r:
        assert r.status == 416
    async with registry.request(
        "PATCH", location, data=b"zzz", headers={"Content-Range": f"{len(data)}-{len(data)}"}
    ) as r:
        assert r.status == 400 and await error_code(r) == "SIZE_INVALID"
    async with registry.request("GET", location) as r:
        assert r.status == 204 and r.headers["Range"] == f"0-{len(data) - 1}"
    async with registry.request("PUT", location, params={"digest": str(digest)}) as r:
        assert r.status == 201
        assert r.headers["Docker-Content-Digest"] == str(digest)
        assert r.headers["Location"].endswith(f"/v2/test/x/blobs/{digest}")
    async with registry.request("GET", f"/v2/test/x/blobs/{digest}") as r:
        assert await r.read() == data
    async with registry.request("GET", location) as r:  # the session is gone after commit
        assert r.status == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"


async def test_streamed_patch_with_transfer_encoding_chunked(registry: Registry) -> None:
    parts = [hashlib.sha256(bytes([i])).digest() * 1000 for i in range(20)]
    data = b"".join(parts)

    async def body() -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    async with registry.request("POST", "/v2/docker/style/blobs/uploads/") as r:
        location = r.headers["Location"]
    async with registry.request("PATCH", location, data=body()) as r:
        assert r.status == 202
        assert r.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert r.headers["Range"] == f"0-{len(data) - 1}"
    # docker appends the digest to the Location it got (which may already hold a query)
    async with registry.request("PUT", f"{location}?digest={Digest.of_bytes(data)}&ns=docker.io") as r:
        assert r.status == 201
    assert registry.storage.has(Digest.of_bytes(data))


async def test_put_with_whole_body_after_post(registry: Registry) -> None:
    """oras: POST, then a PUT carrying the whole blob."""
    data = b"oras-style"
    async with registry.request("POST", "/v2/o/blobs/uploads/") as r:
        location = r.headers["Location"]
    async with registry.request("PUT", location, params={"digest": str(Digest.of_bytes(data))}, data=data) as r:
        assert r.status == 201
    async with registry.request("GET", f"/v2/o/blobs/{Digest.of_bytes(data)}") as r:
        assert await r.read() == data


async def test_wrong_digest_leaves_the_blob_nowhere(registry: Registry) -> None:
    data = b"the real content"
    claimed = Digest.of_bytes(b"something else")
    async with registry.request("POST", "/v2/r/blobs/uploads/") as r:
        location = r.headers["Location"]
    async with registry.request("PATCH", location, data=data) as r:
        assert r.status == 202
    async with registry.request("PUT", location, params={"digest": str(claimed)}) as r:
        assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"
    async with registry.request("POST", "/v2/r/blobs/uploads/", params={"digest": str(claimed)}, data=data) as r:
        assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"
    for d in (claimed, Digest.of_bytes(data)):
        assert not registry.storage.has(d)
        async with registry.request("HEAD", f"/v2/r/blobs/{d}") as r:
            assert r.status == 404
    assert registry.staged_blobs() == []
    assert list(registry.cas.upload_dir.iterdir()) == []
    async with registry.request("PATCH", location, data=b"more") as r:
        assert r.status == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"


async def test_bad_digest_parameters(registry: Registry) -> None:
    async with registry.request("POST", "/v2/r/blobs/uploads/") as r:
        location = r.headers["Location"]
    async with registry.request("PUT", location) as r:
        assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"
    async with registry.request("PUT", location, params={"digest": "sha256:xyz"}) as r:
        assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"
    async with registry.request("GET", location) as r:  # still usable after a malformed PUT
        assert r.status == 204


async def test_unknown_and_foreign_upload_ids(registry: Registry) -> None:
    async with registry.request("PATCH", "/v2/r/blobs/uploads/0123456789abcdef0123456789abcdef", data=b"x") as r:
        assert r.status == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    async with registry.request("PUT", f"/v2/r/blobs/uploads/nope?digest={Digest.of_bytes(b'')}") as r:
        assert r.status == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    async with registry.request("POST", "/v2/mine/blobs/uploads/") as r:
        uid = r.headers["Docker-Upload-UUID"]
    async with registry.request("PATCH", f"/v2/other/blobs/uploads/{uid}", data=b"x") as r:
        assert r.status == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    async with registry.request("DELETE", f"/v2/mine/blobs/uploads/{uid}") as r:
        assert r.status == 204
    async with registry.request("GET", f"/v2/mine/blobs/uploads/{uid}") as r:
        assert r.status == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    assert list(registry.cas.upload_dir.iterdir()) == []


async def test_client_disconnect_mid_upload_leaves_no_blob(registry: Registry) -> None:
    data = b"partial" * 10_000
    digest = Digest.of_bytes(data)
    reader, writer = await asyncio.open_connection(registry.server.host, registry.server.port)
    writer.write(
        f"POST /v2/r/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode() + data[: len(data) // 2]
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    # The half-finished session is dropped.
    await until(lambda: not list(registry.cas.upload_dir.iterdir()), timeout=10,
                what="the upload to be cleaned after the disconnect", interval=0.02)
    assert registry.staged_blobs() == [] and not registry.storage.has(digest)
    await registry.push_blob("r", data)  # and a retry succeeds
    assert registry.storage.has(digest)


async def test_same_blob_pushed_concurrently(registry: Registry) -> None:
    data = b"shared layer" * 5000
    results = await asyncio.gather(*(registry.push_blob(f"repo{i}", data) for i in range(5)))
    assert set(results) == {Digest.of_bytes(data)}
    for i in range(5):
        async with registry.request("GET", f"/v2/repo{i}/blobs/{results[0]}") as r:
            assert await r.read() == data
    assert registry.staged_blobs() == []


async def test_cross_repository_mount(registry: Registry) -> None:
    digest = await registry.push_blob("src/repo", b"mount me")
    async with registry.request(
        "POST", "/v2/dst/blobs/uploads/", params={"mount": str(digest), "from": "src/repo"}
    ) as r:
        assert r.status == 201
        assert r.headers["Docker-Content-Digest"] == str(digest)
        assert r.headers["Location"].endswith(f"/v2/dst/blobs/{digest}")
    async with registry.request("HEAD", f"/v2/dst/blobs/{digest}") as r:
        assert r.status == 200
    missing = Digest.of_bytes(b"not there")
    for params in ({"mount": str(missing), "from": "src/repo"}, {"mount": str(digest), "from": "BAD"},
                   {"mount": "sha256:bad", "from": "src/repo"}):
        async with registry.request("POST", "/v2/dst/blobs/uploads/", params=params) as r:
            assert r.status == 202 and "Docker-Upload-UUID" in r.headers


# ---- blobs: reads ----------------------------------------------------------------------------------

async def test_range_reads(registry: Registry) -> None:
    data = bytes(range(100))
    digest = await registry.push_blob("r", data)
    async with registry.request("GET", f"/v2/r/blobs/{digest}", headers={"Range": "bytes=10-19"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == "bytes 10-19/100"
        assert await r.read() == data[10:20]
    async with registry.request("GET", f"/v2/r/blobs/{digest}", headers={"Range": "bytes=-5"}) as r:
        assert r.status == 206 and await r.read() == data[-5:]
    async with registry.request("GET", f"/v2/r/blobs/{digest}", headers={"Range": "bytes=100-"}) as r:
        assert r.status == 416 and await error_code(r) == "RANGE_INVALID"
        assert r.headers["Content-Range"] == "bytes */100"
    async with registry.request("DELETE", f"/v2/r/blobs/{digest}") as r:
        assert r.status == 405 and await error_code(r) == "UNSUPPORTED"


async def test_upstream_failure_is_unavailable(registry: Registry) -> None:
    registry.storage.fail_with = aiohttp.ClientConnectionError("origin down")
    async with registry.request("HEAD", f"/v2/r/blobs/{Digest.of_bytes(b'x')}") as r:
        assert r.status == 503
    async with registry.request("GET", f"/v2/r/blobs/{Digest.of_bytes(b'x')}") as r:
        assert r.status == 503 and await error_code(r) == "UNAVAILABLE"


# ---- manifests ------------------------------------------------------------------------------------

async def test_manifest_by_tag_and_digest(registry: Registry) -> None:
    digest, raw = await push_image(registry, "test/x", "v1", DOCKER_MANIFEST)
    for ref in ("v1", str(digest)):
        async with registry.request("GET", f"/v2/test/x/manifests/{ref}?ns=docker.io") as r:
            assert r.status == 200
            assert await r.read() == raw
            assert r.headers["Content-Type"] == DOCKER_MANIFEST
            assert r.headers["Docker-Content-Digest"] == str(digest)
    # docker: HEAD with the types as several Accept headers; all must count
    headers = CIMultiDict([("Accept", OCI_MANIFEST), ("Accept", DOCKER_MANIFEST), ("Accept", OCI_INDEX)])
    async with registry.request("HEAD", "/v2/test/x/manifests/v1", headers=headers) as r:
        assert r.status == 200
        assert int(r.headers["Content-Length"]) == len(raw)
        assert r.headers["Docker-Content-Digest"] == str(digest)
    async with registry.request("HEAD", "/v2/test/x/manifests/v1", headers={"Accept": f"{OCI_INDEX}, */*"}) as r:
        assert r.status == 200
    async with registry.request("GET", "/v2/test/x/manifests/v1", headers={"Accept": OCI_MANIFEST}) as r:
        assert r.status == 404 and await error_code(r) == "MANIFEST_UNKNOWN"
    async with registry.request("GET", "/v2/test/x/manifests/nope") as r:
        assert r.status == 404 and await error_code(r) == "MANIFEST_UNKNOWN"
    async with registry.request("DELETE", "/v2/test/x/manifests/v1") as r:
        assert r.status == 405


async def test_manifest_put_by_digest(registry: Registry) -> None:
    cd = await registry.push_blob("r", b"{}")
    doc = image(cd, 2, [])
    raw = json.dumps(doc).encode()
    good = Digest.of_bytes(raw)
    async with registry.request("PUT", f"/v2/r/manifests/{Digest.of_bytes(b'other')}", data=raw) as r:
        assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"
    async with registry.request(
        "PUT", f"/v2/r/manifests/{good}", data=raw, headers={"Content-Type": OCI_MANIFEST}
    ) as r:
        assert r.status == 201
        assert r.headers["Location"].endswith(f"/v2/r/manifests/{good}")
    assert registry.storage.tags == {}
    async with registry.request("GET", f"/v2/r/manifests/{good}") as r:
        assert await r.read() == raw and r.headers["Content-Type"] == OCI_MANIFEST


async def test_manifest_with_missing_blob_is_refused_and_not_tagged(registry: Registry) -> None:
    cd = await registry.push_blob("r", b"{}")
    missing = [Digest.of_bytes(b"layer-a"), Digest.of_bytes(b"layer-b")]
    doc = image(cd, 2, [(d, 7) for d in missing])
    status, body = await registry.push_manifest("r", "v1", doc)
    assert status == 400
    assert [e["code"] for e in body["errors"]] == ["MANIFEST_BLOB_UNKNOWN"]  # the check stops at the first
    assert body["errors"][0]["detail"]["digest"] in [str(d) for d in missing]
    async with registry.request("GET", "/v2/r/manifests/v1") as r:
        assert r.status == 404
    assert registry.storage.tags == {}
    assert not registry.storage.has(Digest.of_bytes(json.dumps(doc).encode()))
    # a blob of another repository does not count
    other = await registry.push_blob("elsewhere", b"layer-a")
    status, _ = await registry.push_manifest("r", "v1", image(cd, 2, [(other, 7)]))
    assert status == 400 and registry.storage.tags == {}


async def test_malformed_and_oversized_manifests(registry: Registry) -> None:
    for body in (
        b"{not json",
        b"[]",
        b'{"schemaVersion": 1}',
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode(),
    ):
        async with registry.request("PUT", "/v2/r/manifests/v1", data=body) as r:
            assert r.status == 400 and await error_code(r) == "MANIFEST_INVALID", body
    big = json.dumps({"schemaVersion": 2, "padding": "x" * 5000}).encode()
    async with registry.request("PUT", "/v2/r/manifests/v1", data=big) as r:
        assert r.status == 413 and await error_code(r) == "SIZE_INVALID"

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
        yield big

    async with registry.request("PUT", "/v2/r/manifests/v1", data=streamed()) as r:
        assert r.status == 413
    async with registry.request("PUT", "/v2/r/manifests/bad!tag", data=b"{}") as r:
        assert r.status == 400 and await error_code(r) == "TAG_INVALID"
    assert registry.storage.tags == {} and list(registry.storage.root.iterdir()) == []


async def test_index_requires_its_child_manifests(registry: Registry) -> None:
    child_digest, child_raw = await push_image(registry, "multi", "amd64")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(child_digest), "size": len(child_raw),
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": str(Digest.of_bytes(b"arm64 manifest")), "size": 10},
    ]}
    status, body = await registry.push_manifest("multi", "latest", index, OCI_INDEX)
    assert status == 400 and body["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    index["manifests"].pop()
    status, _ = await registry.push_manifest("multi", "latest", index, OCI_INDEX)
    assert status == 201
    async with registry.request("GET", "/v2/multi/manifests/latest") as r:
        assert r.headers["Content-Type"] == OCI_INDEX


# ---- tags and catalog ------------------------------------------------------------------------------

async def test_tags_list_and_catalog_pagination(registry: Registry) -> None:
    for tag in ("a", "b", "c", "d", "e"):
        await push_image(registry, "test/x", tag)
    await push_image(registry, "other", "v1")
    async with registry.request("GET", "/v2/test/x/tags/list") as r:
        assert await r.json() == {"name": "test/x", "tags": ["a", "b", "c", "d", "e"]}
        assert "Link" not in r.headers
    async with registry.request("GET", "/v2/test/x/tags/list", params={"n": "2"}) as r:
        assert (await r.json())["tags"] == ["a", "b"]
        assert r.headers["Link"] == '</v2/test/x/tags/list?n=2&last=b>; rel="next"'
    async with registry.request("GET", "/v2/test/x/tags/list", params={"n": "2", "last": "d"}) as r:
        assert (await r.json())["tags"] == ["e"] and "Link" not in r.headers
    async with registry.request("GET", "/v2/test/x/tags/list", params={"n": "x"}) as r:
        assert r.status == 400 and await error_code(r) == "PAGINATION_NUMBER_INVALID"
    async with registry.request("GET", "/v2/nobody/tags/list") as r:
        assert r.status == 404 and await error_code(r) == "NAME_UNKNOWN"
    async with registry.request("GET", "/v2/_catalog") as r:
        assert await r.json() == {"repositories": ["other", "test/x"]}
    async with registry.request("GET", "/v2/_catalog", params={"n": "1"}) as r:
        assert await r.json() == {"repositories": ["other"]}
        assert r.headers["Link"] == '</v2/_catalog?n=1&last=other>; rel="next"'


# ---- read-only mode (the agent) ---------------------------------------------------------------------

async def test_read_only_registry_refuses_writes(tmp_path: Path) -> None:
    server, storage, _ = await _start(tmp_path, read_only=True)
    blob = b"cached"
    digest = Digest.of_bytes(blob)
    await storage.put_blob_bytes("r", digest, blob)
    try:
        async with aiohttp.ClientSession() as s:
            for method, path, allow in [
                ("POST", "/v2/r/blobs/uploads/", ""), ("PUT", "/v2/r/manifests/v1", "GET, HEAD"),
                ("PATCH", "/v2/r/blobs/uploads/abc", ""), ("PUT", f"/v2/r/blobs/uploads/abc?digest={digest}", ""),
                ("GET", "/v2/r/blobs/uploads/abc", ""),
                ("DELETE", f"/v2/r/blobs/{digest}", "GET, HEAD"),
            ]:
                async with s.request(method, server.make_url(path), data=b"{}") as r:
                    assert r.status == 405 and await error_code(r) == "UNSUPPORTED", (method, path)
                    assert r.headers["Allow"] == allow, (method, path)  # RFC 9110: every 405 has one
            async with s.get(server.make_url(f"/v2/r/blobs/{digest}")) as r:
                assert r.status == 200 and await r.read() == blob
    finally:
        await server.close()


def test_writable_registry_needs_an_upload_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        add_registry_routes(create_app("x"), LocalStorage(tmp_path), read_only=False)


# ---- every /v2 answer is registry error JSON; the spec's status tables ----------------------------

async def test_405_answers_carry_allow(registry: Registry) -> None:
    for method, path, allow in [
        ("DELETE", "/v2/r/manifests/v1", "GET, HEAD, PUT"),
        ("POST", "/v2/", "GET, HEAD"),
        ("DELETE", "/v2/_catalog", "GET, HEAD"),
        ("PUT", "/v2/r/tags/list", "GET, HEAD"),
        ("GET", "/v2/r/blobs/uploads/", "POST"),
        ("POST", "/v2/r/blobs/uploads/abc", "GET, PATCH, PUT, DELETE"),
    ]:
        async with registry.request(method, path) as r:
            assert r.status == 405 and await error_code(r) == "UNSUPPORTED", (method, path)
            assert r.headers["Allow"] == allow, (method, path)


async def test_reading_a_manifest_by_an_invalid_reference_is_404(registry: Registry) -> None:
    """The spec allows only 200 or 404 for GET/HEAD of a manifest; a PUT is still refused with
    TAG_INVALID (the conformance suite's ``.INVALID_MANIFEST_validation``)."""
    for reference in (".INVALID_MANIFEST_validation", "sha256:nothex", "bad%0Atag"):
        for method in ("GET", "HEAD"):
            async with registry.session.request(
                method, URL(registry.url(f"/v2/r/manifests/{reference}"), encoded=True)
            ) as r:
                assert r.status == 404, (method, reference)
                if method == "GET":
                    assert await error_code(r) == "MANIFEST_UNKNOWN"
    async with registry.request("PUT", "/v2/r/manifests/.INVALID_MANIFEST_validation", data=b"{}") as r:
        assert r.status == 400 and await error_code(r) == "TAG_INVALID"


async def test_paths_with_newlines_and_unexpected_failures_are_registry_json(registry: Registry) -> None:
    for path in ("/v2/foo%0Abar/tags/list", "/v2/foo%0A/manifests/latest", f"/v2/a%0Ab/blobs/{Digest.of_bytes(b'x')}"):
        async with registry.session.get(URL(registry.url(path), encoded=True)) as r:
            assert r.status == 400 and await error_code(r) == "NAME_INVALID", path
            assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    registry.storage.fail_with = RuntimeError("disk controller on fire")
    async with registry.request("GET", f"/v2/r/blobs/{Digest.of_bytes(b'x')}") as r:
        assert r.status == 500 and r.content_type == "application/json"
        assert (await r.json())["errors"] == [{"code": "UNKNOWN", "message": "unknown error", "detail": "RuntimeError"}]
    registry.storage.fail_with = OSError(errno.ENOSPC, "No space left on device")
    async with registry.request("HEAD", f"/v2/r/blobs/{Digest.of_bytes(b'x')}") as r:
        assert r.status == 507
    async with registry.request("GET", f"/v2/r/blobs/{Digest.of_bytes(b'x')}") as r:
        assert r.status == 507 and await error_code(r) == "UNKNOWN"


# ---- upload session limits ----------------------------------------------------------------------

async def test_upload_sessions_are_capped_per_client_and_in_total(tmp_path: Path) -> None:
    server, storage, cas = await _start(tmp_path, read_only=False, upload_limits=UploadLimits(per_client=3, total=4))
    other_host = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))  # a second client address
    try:
        async with aiohttp.ClientSession() as a, aiohttp.ClientSession(connector=other_host) as b:
            async def post(s: aiohttp.ClientSession, **kwargs) -> aiohttp.ClientResponse:
                async with s.post(server.make_url("/v2/r/blobs/uploads/"), **kwargs) as r:
                    await r.read()
                    return r

            locations = []
            for _ in range(3):
                r = await post(a)
                assert r.status == 202
                locations.append(r.headers["Location"])
            r = await post(a)
            assert r.status == 429 and (await r.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
            assert r.headers["Retry-After"] == "10"
            assert len(list(cas.upload_dir.iterdir())) == 3  # the refused one left no file
            assert (await post(b)).status == 202  # another address has its own quota...
            r = await post(b)
            assert r.status == 503 and (await r.json())["errors"][0]["code"] == "UNAVAILABLE"  # ...within the total
            async with a.delete(locations[0]) as r:
                assert r.status == 204
            data = b"monolithic after a slot was freed"
            assert (await post(a, params={"digest": str(Digest.of_bytes(data))}, data=data)).status == 201
            assert (await post(a)).status == 202  # the monolithic upload's session ended with it
            assert len(list(cas.upload_dir.iterdir())) == 4
    finally:
        await server.close()
