"""The proxy as a real process in front of real testfs, origin and build-index processes.

Pushes and pulls by raw HTTP the way docker, skopeo/podman, containerd and oras do (their own
end-to-end tests live in tests/realclients/), and checks that bad input leaves nothing
behind: not in the proxy's staging store, not on the origin, not as a tag in build-index.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from kraken.core.digest import Digest
from kraken.devcluster import free_port
from kraken.proxy.config import BuildIndexConfig, ProxyConfig, StoreConfig
from kraken.proxy.server import create_proxy_app
from kraken.registry.manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from kraken.ring import RingConfig
from kraken.store.cas import CAStore
from tests.support.cluster import Herd
from tests.support.metrics import metric_sum
from tests.support.proxy import Proxy, manifest_for
from tests.support.waiting import until

DEADLINE = 15.0



@pytest.fixture
def proxy(herd: Herd, http: aiohttp.ClientSession) -> Proxy:
    return Proxy(herd, http)


async def error_codes(r: aiohttp.ClientResponse) -> list[str]:
    return [e["code"] for e in (await r.json())["errors"]]


# ---- push and pull ---------------------------------------------------------------------------------

async def test_push_and_pull_an_image(proxy: Proxy) -> None:
    repo = "test/x"
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer1 = bytes(range(256)) * 3000          # ~750 KB, chunked PATCHes
    layer2 = b"streamed layer " * 200_000     # ~3 MB, one streamed PATCH
    cd = await proxy.push_monolithic(repo, config)
    l1 = await proxy.push_chunked(repo, layer1, chunk=100_000)
    l2 = await proxy.push_streamed(repo, layer2)
    raw = manifest_for((cd, len(config)), [(l1, len(layer1)), (l2, len(layer2))], DOCKER_MANIFEST)
    md = Digest.of_bytes(raw)
    r = await proxy.put_manifest(repo, "v1", raw, DOCKER_MANIFEST)
    assert r.status == 201
    assert r.headers["Docker-Content-Digest"] == str(md)
    assert r.headers["Location"] == f"{proxy.url}/v2/{repo}/manifests/{md}"

    # pull like docker: HEAD the tag with several Accept headers, GET by digest, then the blobs
    accept = CIMultiDict([("Accept", DOCKER_MANIFEST), ("Accept", DOCKER_MANIFEST_LIST),
                          ("Accept", OCI_INDEX), ("Accept", OCI_MANIFEST)])
    async with proxy.request("HEAD", f"/v2/{repo}/manifests/v1", headers=accept) as r:
        assert r.status == 200
        assert r.headers["Docker-Content-Digest"] == str(md)
        assert int(r.headers["Content-Length"]) == len(raw)
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    for ref in ("v1", str(md)):
        async with proxy.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": f"{OCI_MANIFEST}, */*"}) as r:
            assert r.status == 200
            assert await r.read() == raw
            assert r.headers["Content-Type"] == DOCKER_MANIFEST
    for digest, data in ((cd, config), (l1, layer1), (l2, layer2)):
        async with proxy.request("GET", f"/v2/{repo}/blobs/{digest}") as r:
            assert r.status == 200 and await r.read() == data
            assert r.headers["Docker-Content-Digest"] == str(digest)
        assert await proxy.origin_has(repo, digest)
    assert await proxy.build_index_tag(repo, "v1") == str(md)
    assert proxy.staged_blobs() == []  # everything went to the origin; nothing kept locally

    async with proxy.request("GET", f"/v2/{repo}/blobs/{l1}", headers={"Range": "bytes=1000-1999"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(layer1)}"
        assert await r.read() == layer1[1000:2000]

    async with proxy.request("GET", "/metrics") as r:
        metrics = await r.text()
    uploaded = float(re.search(r"^kraken_proxy_blob_bytes_uploaded_total (\S+)$", metrics, re.M).group(1))
    assert uploaded >= len(config) + len(layer1) + len(layer2) + len(raw)


async def test_containerd_style_pull_with_ns_parameter(proxy: Proxy) -> None:
    repo = "library/ctr"
    cd = await proxy.push_monolithic(repo, b"{}")
    raw = manifest_for((cd, 2), [], OCI_MANIFEST)
    assert (await proxy.put_manifest(repo, "latest", raw, OCI_MANIFEST)).status == 201
    accept = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}, {OCI_INDEX}, */*"}
    async with proxy.request("HEAD", f"/v2/{repo}/manifests/latest?ns=docker.io", headers=accept) as r:
        assert r.status == 200 and r.headers["Content-Type"] == OCI_MANIFEST
    async with proxy.request("GET", f"/v2/{repo}/blobs/{cd}?ns=docker.io") as r:
        assert r.status == 200 and await r.read() == b"{}"


async def test_index_of_manifests(proxy: Proxy) -> None:
    repo = "multi/arch"
    children = []
    for arch in ("amd64", "arm64"):
        config = json.dumps({"architecture": arch, "os": "linux"}).encode()
        cd = await proxy.push_monolithic(repo, config)
        raw = manifest_for((cd, len(config)), [], OCI_MANIFEST)
        r = await proxy.put_manifest(repo, str(Digest.of_bytes(raw)), raw, OCI_MANIFEST)
        assert r.status == 201
        children.append({"mediaType": OCI_MANIFEST, "digest": str(Digest.of_bytes(raw)), "size": len(raw),
                         "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    assert (await proxy.put_manifest(repo, "latest", index, OCI_INDEX)).status == 201
    async with proxy.request("GET", f"/v2/{repo}/manifests/latest") as r:
        assert await r.read() == index and r.headers["Content-Type"] == OCI_INDEX
    missing_child = {**children[0], "digest": str(Digest.of_bytes(b"no such manifest"))}
    bad = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [missing_child]}).encode()
    r = await proxy.put_manifest(repo, "broken", bad, OCI_INDEX)
    assert r.status == 400 and await error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]
    assert await proxy.build_index_tag(repo, "broken") is None


async def test_repush_of_a_tag_moves_it(proxy: Proxy) -> None:
    repo = "moving/tag"
    digests = []
    for content in (b'{"v":1}', b'{"v":2}'):
        cd = await proxy.push_monolithic(repo, content)
        raw = manifest_for((cd, len(content)), [], OCI_MANIFEST)
        assert (await proxy.put_manifest(repo, "latest", raw, OCI_MANIFEST)).status == 201
        digests.append(Digest.of_bytes(raw))
        async with proxy.request("HEAD", f"/v2/{repo}/manifests/latest") as r:
            assert r.headers["Docker-Content-Digest"] == str(digests[-1])


async def test_tags_list_and_catalog(proxy: Proxy) -> None:
    repo = "listing/repo"
    cd = await proxy.push_monolithic(repo, b'{"listing":true}')
    raw = manifest_for((cd, 16), [], OCI_MANIFEST)
    for tag in ("t1", "t2", "t3"):
        assert (await proxy.put_manifest(repo, tag, raw, OCI_MANIFEST)).status == 201
    async with proxy.request("GET", f"/v2/{repo}/tags/list") as r:
        assert await r.json() == {"name": repo, "tags": ["t1", "t2", "t3"]}
    async with proxy.request("GET", f"/v2/{repo}/tags/list?n=2") as r:
        assert (await r.json())["tags"] == ["t1", "t2"]
        link = r.headers["Link"]
    next_path = link[link.index("<") + 1:link.index(">")]
    async with proxy.request("GET", next_path) as r:
        assert (await r.json())["tags"] == ["t3"] and "Link" not in r.headers
    async with proxy.request("GET", "/v2/no/such/repo/tags/list") as r:
        assert r.status == 404 and await error_codes(r) == ["NAME_UNKNOWN"]
    async with proxy.request("GET", "/v2/_catalog") as r:
        repos = (await r.json())["repositories"]
    assert repo in repos and repos == sorted(repos)
    async with proxy.request("GET", "/v2/_catalog?n=1") as r:
        assert len((await r.json())["repositories"]) == 1 and 'rel="next"' in r.headers["Link"]


async def test_second_push_hits_and_mounts(proxy: Proxy) -> None:
    data = b"a layer pushed twice" * 1000
    digest = await proxy.push_streamed("first/repo", data)
    async with proxy.request("HEAD", f"/v2/first/repo/blobs/{digest}") as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
    params = {"mount": str(digest), "from": "first/repo"}
    async with proxy.request("POST", "/v2/second/repo/blobs/uploads/", params=params) as r:
        assert r.status == 201
        assert r.headers["Location"] == f"{proxy.url}/v2/second/repo/blobs/{digest}"
    async with proxy.request("GET", f"/v2/second/repo/blobs/{digest}") as r:
        assert r.status == 200 and await r.read() == data
    unknown = {"mount": str(Digest.of_bytes(b"never pushed")), "from": "first/repo"}
    async with proxy.request("POST", "/v2/second/repo/blobs/uploads/", params=unknown) as r:
        assert r.status == 202 and "Docker-Upload-UUID" in r.headers
    assert await proxy.push_chunked("second/repo", data, chunk=len(data)) == digest  # pushing again is fine


# ---- bad input leaves nothing behind ---------------------------------------------------------------

async def test_wrong_digest_is_refused_and_stored_nowhere(proxy: Proxy) -> None:
    data = b"content that does not match"
    claimed = Digest.of_bytes(b"what the client claims")
    origin_uploads_before = proxy.origin_uploads()
    location = await proxy.start_upload("bad/digest")
    async with proxy.request("PATCH", location, data=data) as r:
        assert r.status == 202
    async with proxy.request("PUT", location, params={"digest": str(claimed)}) as r:
        assert r.status == 400 and await error_codes(r) == ["DIGEST_INVALID"]
    for digest in (claimed, Digest.of_bytes(data)):
        assert not await proxy.origin_has("bad/digest", digest)
        async with proxy.request("HEAD", f"/v2/bad/digest/blobs/{digest}") as r:
            assert r.status == 404
    assert proxy.staged_blobs() == []
    await until(lambda: URL(location).name not in proxy.upload_sessions(), what="the session's file to be deleted")
    assert proxy.origin_uploads() == origin_uploads_before  # the bytes streamed ahead are dropped too
    async with proxy.request("GET", location) as r:
        assert r.status == 404 and await error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]


async def test_wrong_bytes_under_a_stored_digest_are_refused(proxy: Proxy) -> None:
    """The proxy hashes no upload itself: the origin checks the bytes even when it has the
    blob named already, so wrong bytes are refused, not taken for the stored blob."""
    data = b"the real content" * 1000
    digest = await proxy.push_chunked("bad/again", data, chunk=len(data))
    location = await proxy.start_upload("bad/again")
    async with proxy.request("PATCH", location, data=b"other bytes" * 1000) as r:
        assert r.status == 202
    async with proxy.request("PUT", location, params={"digest": str(digest)}) as r:
        assert r.status == 400 and await error_codes(r) == ["DIGEST_INVALID"]
    async with proxy.request("GET", f"/v2/bad/again/blobs/{digest}") as r:
        assert r.status == 200 and await r.read() == data
    assert proxy.staged_blobs() == []
    await until(lambda: URL(location).name not in proxy.upload_sessions(), what="the session's file to be deleted")


async def test_manifest_errors_store_no_tag(proxy: Proxy) -> None:
    repo = "bad/manifest"
    cd = await proxy.push_monolithic(repo, b"{}")
    missing = Digest.of_bytes(b"layer never pushed")
    raw = manifest_for((cd, 2), [(missing, 18)], OCI_MANIFEST)
    r = await proxy.put_manifest(repo, "v1", raw, OCI_MANIFEST)
    assert r.status == 400
    body = await r.json()
    assert body["errors"] == [{"code": "MANIFEST_BLOB_UNKNOWN", "message": body["errors"][0]["message"],
                               "detail": {"digest": str(missing)}}]
    assert await proxy.build_index_tag(repo, "v1") is None
    assert not await proxy.origin_has(repo, Digest.of_bytes(raw))
    for malformed in (b'{"schemaVersion": 2, "config": ', b"{oops", b'{"schemaVersion": 2, "layers": []}'):
        r = await proxy.put_manifest(repo, "v1", malformed, OCI_MANIFEST)
        assert r.status == 400 and await error_codes(r) == ["MANIFEST_INVALID"]
    huge = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "pad": "x" * (5 << 20)}).encode()
    r = await proxy.put_manifest(repo, "v1", huge, OCI_MANIFEST)
    assert r.status == 413
    wrong = Digest.of_bytes(b"not the manifest")
    async with proxy.request(
        "PUT", f"/v2/{repo}/manifests/{wrong}", data=raw, headers={"Content-Type": OCI_MANIFEST}
    ) as r:
        assert r.status == 400 and await error_codes(r) == ["DIGEST_INVALID"]
    assert await proxy.build_index_tag(repo, "v1") is None


@pytest.mark.parametrize("name", ["Upper/case", "a/../../etc", "..", "bad$name", "a//b", "-lead"])
async def test_invalid_names(proxy: Proxy, name: str) -> None:
    for method, suffix in (("POST", "blobs/uploads/"), ("GET", "manifests/latest"), ("GET", "tags/list")):
        url = URL(f"{proxy.url}/v2/{name}/{suffix}", encoded=True)
        async with proxy.http.request(method, url) as r:
            assert r.status == 400 and await error_codes(r) == ["NAME_INVALID"], (method, name)
    assert not any(p.name == "etc" for p in proxy.herd.workdir.rglob("etc"))


async def test_unknown_upload_ids(proxy: Proxy) -> None:
    for method in ("PATCH", "PUT", "GET", "DELETE"):
        path = f"/v2/some/repo/blobs/uploads/ffffffffffffffffffffffffffffffff?digest={Digest.of_bytes(b'')}"
        async with proxy.request(method, path, data=b"x" if method in ("PATCH", "PUT") else None) as r:
            assert r.status == 404 and await error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"], method


async def test_client_disconnect_leaves_no_partial_blob(proxy: Proxy) -> None:
    data = b"disconnect me" * 200_000
    digest = Digest.of_bytes(data)
    origin_uploads_before = proxy.origin_uploads()
    location = URL(await proxy.start_upload("cut/off"))
    sessions_before = proxy.upload_sessions()
    assert location.name in sessions_before
    for request_line in (f"PATCH {location.path_qs}", f"POST /v2/cut/off/blobs/uploads/?digest={digest}"):
        reader, writer = await asyncio.open_connection(location.host, location.port)
        writer.write(f"{request_line} HTTP/1.1\r\nHost: {location.host}:{location.port}\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data[: len(data) // 3])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def monolithic_session_dropped() -> bool:
        return proxy.upload_sessions() == sessions_before

    await until(monolithic_session_dropped, DEADLINE, "the cut-off monolithic upload to be dropped")
    assert proxy.staged_blobs() == []
    assert not await proxy.origin_has("cut/off", digest)
    async with proxy.request("PUT", str(location), params={"digest": str(digest)}) as r:  # partial bytes
        assert r.status == 400 and await error_codes(r) == ["DIGEST_INVALID"]
    assert not await proxy.origin_has("cut/off", digest)
    assert proxy.staged_blobs() == []
    await until(lambda: location.name not in proxy.upload_sessions(), what="the session's file to be deleted")

    async def origin_uploads_dropped() -> bool:
        return proxy.origin_uploads() == origin_uploads_before

    await until(origin_uploads_dropped, DEADLINE, "the origin to drop the cut-off streams")


async def test_readiness_and_base(proxy: Proxy) -> None:
    async with proxy.request("GET", "/readiness") as r:
        assert r.status == 200
    async with proxy.request("GET", "/v2/") as r:
        assert r.status == 200 and await r.json() == {}
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


# ---- the proxy in-process, with a build-index that refuses ---------------------------------------

async def test_build_index_refusal_and_readiness(herd: Herd, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """build-index re-checks references; its refusal reaches the client as MANIFEST_BLOB_UNKNOWN."""
    refused = Digest.of_bytes(b"build-index says this is missing")

    async def put_tag(_: web.Request) -> web.Response:
        return web.json_response({"error": "references missing", "missing": [str(refused)]}, status=400)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    fake = web.Application()
    fake.router.add_put("/tags/{tag:.+}/digest/{digest}", put_tag)
    fake.router.add_get("/health", health)
    fake_server = TestServer(fake)
    await fake_server.start_server()
    config = ProxyConfig(
        store=StoreConfig(str(tmp_path / "proxy")),
        origins=RingConfig([herd.origin.addr]),
        build_index=BuildIndexConfig(f"{fake_server.host}:{fake_server.port}"),
    )
    proxy_server = TestServer(create_proxy_app(config))
    await proxy_server.start_server()
    try:
        base = str(proxy_server.make_url(""))
        async with http.post(f"{base}/v2/refused/blobs/uploads/?digest={Digest.of_bytes(b'{}')}", data=b"{}") as r:
            assert r.status == 201
        raw = manifest_for((Digest.of_bytes(b"{}"), 2), [], OCI_MANIFEST)
        async with http.put(f"{base}/v2/refused/manifests/v1", data=raw, headers={"Content-Type": OCI_MANIFEST}) as r:
            assert r.status == 400
            assert (await r.json())["errors"][0] == {
                "code": "MANIFEST_BLOB_UNKNOWN", "message": "manifest references a blob unknown to registry",
                "detail": {"digest": str(refused)},
            }
        async with http.get(f"{base}/readiness") as r:
            assert r.status == 200
        await fake_server.close()
        async with http.get(f"{base}/readiness") as r:
            assert r.status == 503
        async with http.get(f"{base}/v2/refused/manifests/v1") as r:  # tags unreachable: retryable
            assert r.status == 503 and await error_codes(r) == ["UNAVAILABLE"]
    finally:
        await proxy_server.close()
        await fake_server.close()


async def test_start_clears_what_a_crashed_run_left_in_staging(herd: Herd, tmp_path: Path) -> None:
    root = tmp_path / "proxy"
    leftover = CAStore(root)
    await leftover.put_bytes(Digest.of_bytes(b"verified, never handed over"), b"verified, never handed over")
    (leftover.upload_dir / "0123456789abcdef0123456789abcdef").write_bytes(b"half an upload")
    config = ProxyConfig(
        store=StoreConfig(str(root)), origins=RingConfig([herd.origin.addr]),
        build_index=BuildIndexConfig(herd.build_index.addr),
    )
    server = TestServer(create_proxy_app(config))
    await server.start_server()
    try:
        async def staging_empty() -> bool:
            return not any(p.is_file() for p in root.rglob("*"))

        await until(staging_empty, DEADLINE, "the proxy to clear its staging store")
    finally:
        await server.close()


# ---- a refused push stores nothing; reference checks are bounded ---------------------------------

async def origin_blob_heads(proxy: Proxy) -> float:
    """Blob HEADs the origin has answered so far (its request counter, any status)."""
    async with proxy.http.get(f"{proxy.herd.origin.url}/metrics") as r:
        text = await r.text()
    return metric_sum(text, "kraken_http_requests_total", method="HEAD", route="/namespace/{ns}/blobs/{digest}")


async def test_an_index_refused_for_its_children_is_not_stored(proxy: Proxy) -> None:
    repo = "refused/index"
    layer = await proxy.push_monolithic(repo, b"a layer, not a manifest")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(layer), "size": 23}]}).encode()
    r = await proxy.put_manifest(repo, "latest", index, OCI_INDEX)
    assert r.status == 400 and await error_codes(r) == ["MANIFEST_INVALID"]
    async with proxy.request("GET", f"/v2/{repo}/manifests/{Digest.of_bytes(index)}") as r:
        assert r.status == 404 and await error_codes(r) == ["MANIFEST_UNKNOWN"]
    assert not await proxy.origin_has(repo, Digest.of_bytes(index))
    assert await proxy.build_index_tag(repo, "latest") is None


async def test_reference_checks_are_capped_and_stop_at_the_first_missing_blob(proxy: Proxy) -> None:
    repo = "amplified/refs"
    cd = await proxy.push_monolithic(repo, b'{"amplified": true}')
    layers = [(Digest.of_bytes(f"never pushed {i}".encode()), 10) for i in range(2000)]
    huge = manifest_for((cd, 19), layers, OCI_MANIFEST)
    before = await origin_blob_heads(proxy)
    r = await proxy.put_manifest(repo, "huge", huge, OCI_MANIFEST)
    assert r.status == 400 and await error_codes(r) == ["MANIFEST_INVALID"]
    assert "2001 references, over the limit of 200" in (await r.json())["errors"][0]["detail"]
    assert int(r.headers["Content-Length"]) < 1000
    assert await origin_blob_heads(proxy) == before  # refused before any origin was asked

    within_cap = manifest_for((cd, 19), layers[:199], OCI_MANIFEST)
    r = await proxy.put_manifest(repo, "many", within_cap, OCI_MANIFEST)
    assert r.status == 400 and await error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]  # one entry: the first found
    assert int(r.headers["Content-Length"]) < 1000
    assert await origin_blob_heads(proxy) - before <= 2 * 16  # not 200: at most two rounds in flight
    for raw in (huge, within_cap):
        assert not await proxy.origin_has(repo, Digest.of_bytes(raw))


async def test_a_tagged_push_while_build_index_is_down_stores_nothing(
    herd: Herd, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = ProxyConfig(
        store=StoreConfig(str(tmp_path / "proxy")), origins=RingConfig([herd.origin.addr]),
        build_index=BuildIndexConfig(f"127.0.0.1:{free_port()}"),  # nothing listens there
    )
    server = TestServer(create_proxy_app(config))
    await server.start_server()
    try:
        base = str(server.make_url(""))
        config_blob = b'{"pushed while build-index is down": true}'  # a manifest no other test pushes
        cd = Digest.of_bytes(config_blob)
        async with http.post(f"{base}/v2/no/tags/blobs/uploads/?digest={cd}", data=config_blob) as r:
            assert r.status == 201
        raw = manifest_for((cd, len(config_blob)), [], OCI_MANIFEST)
        async with http.put(f"{base}/v2/no/tags/manifests/v1", data=raw, headers={"Content-Type": OCI_MANIFEST}) as r:
            assert r.status == 503 and await error_codes(r) == ["UNAVAILABLE"]
        async with http.get(f"{base}/v2/no/tags/manifests/{Digest.of_bytes(raw)}") as r:
            assert r.status == 404 and await error_codes(r) == ["MANIFEST_UNKNOWN"]
        async with http.put(f"{base}/v2/no/tags/manifests/{Digest.of_bytes(raw)}", data=raw,
                            headers={"Content-Type": OCI_MANIFEST}) as r:
            assert r.status == 201  # by digest, no tag is involved
    finally:
        await server.close()


async def test_a_full_or_broken_staging_disk_answers_registry_json(
    herd: Herd, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A full disk (a 1 MB tmpfs: needs root) is 507 UNAVAILABLE, a broken staging dir 500, both as
    registry error JSON (it was ``{"error": ...}``, which clients cannot parse)."""
    root = tmp_path / "tiny"
    root.mkdir()
    mounted = await asyncio.to_thread(
        subprocess.run, ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    config = ProxyConfig(store=StoreConfig(str(root)), origins=RingConfig([herd.origin.addr]),
                         build_index=BuildIndexConfig(herd.build_index.addr))
    server = TestServer(create_proxy_app(config))
    await server.start_server()
    try:
        base = str(server.make_url(""))
        data = os.urandom(2 << 20)
        async with http.post(f"{base}/v2/full/disk/blobs/uploads/?digest={Digest.of_bytes(data)}", data=data) as r:
            assert r.status == 507 and await error_codes(r) == ["UNAVAILABLE"]  # the upload write failed: retry later
            assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        uploads = root / "uploads"
        await asyncio.to_thread(shutil.rmtree, uploads)
        uploads.write_bytes(b"not a directory")
        async with http.post(f"{base}/v2/full/disk/blobs/uploads/") as r:
            assert r.status == 500 and await error_codes(r) == ["UNKNOWN"]
    finally:
        await server.close()
        await asyncio.to_thread(subprocess.run, ["umount", str(root)], check=True)


async def test_upload_posts_over_the_configured_cap_get_429(
    herd: Herd, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = ProxyConfig(store=StoreConfig(str(tmp_path / "proxy")), origins=RingConfig([herd.origin.addr]),
                         build_index=BuildIndexConfig(herd.build_index.addr), max_uploads_per_client=5)
    server = TestServer(create_proxy_app(config))
    await server.start_server()
    try:
        url = server.make_url("/v2/capped/blobs/uploads/")
        for _ in range(5):
            async with http.post(url) as r:
                assert r.status == 202
        async with http.post(url) as r:
            assert r.status == 429 and await error_codes(r) == ["TOOMANYREQUESTS"]
            assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert len(list((tmp_path / "proxy" / "uploads").iterdir())) == 5
    finally:
        await server.close()
