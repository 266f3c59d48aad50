"""The OCI referrers API end to end: attach with the oras SDK through the proxy, discover
through the proxy and an agent, lists kept in build-index's backend across restarts, and the
bounds and checks that keep a list honest.

One herd for the module: testfs, two origins (so a subject and its referrers usually live on
different origins), tracker, build-index, proxy and one agent, with build-index allowing only
``MAX_REFERRERS`` referrers per subject so the limit is reachable.
"""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from kraken.backend import BackendConfig, FileBackendConfig, NamespaceBackendConfig, build_router
from kraken.buildindex.referrerstore import ReferrerLimit, ReferrerStore
from kraken.buildindex.tags import parse_tag
from kraken.buildindex.tagstore import TagStore
from kraken.core.digest import Digest
from kraken.registry.manifest import OCI_INDEX, OCI_MANIFEST
from kraken.registry.referrer_index import ReferrerDescriptor
from tests.support.cluster import Herd, start_herd
from tests.support.metrics import metric
from tests.support.oras import oras_attach, oras_discover, oras_push

MAX_REFERRERS = 3
SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"
EMPTY_JSON = "application/vnd.oci.empty.v1+json"


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    h = start_herd(Path(tmp_path_factory.mktemp("referrers")), origins=2, agents=1,
                   overrides={"build-index": {"max_referrers": MAX_REFERRERS, "max_referrer_size": "2KB"}})
    try:
        yield h
    finally:
        h.stop()


def _file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(256))
    return path


async def push_subject(herd: Herd, http: aiohttp.ClientSession, tmp_path: Path, repo: str) -> dict:
    """An artifact pushed with oras under ``repo:v1``; its descriptor (from the bytes served)."""
    pushed = await asyncio.to_thread(oras_push, herd.proxy.addr, f"{repo}:v1", [_file(tmp_path, "app.bin")])
    assert pushed.status == 201
    async with http.get(f"{herd.proxy.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}) as r:
        assert r.status == 200
        raw = await r.read()
    assert str(Digest.of_bytes(raw)) == pushed.manifest_digest
    return {"mediaType": OCI_MANIFEST, "digest": pushed.manifest_digest, "size": len(raw)}


async def attach(herd: Herd, tmp_path: Path, repo: str, tag: str, subject: dict, artifact_type: str,
                 annotations: dict[str, str]) -> str:
    """oras-attach an artifact; returns its manifest digest after checking the push's answer."""
    res = await asyncio.to_thread(
        oras_attach, herd.proxy.addr, f"{repo}:{tag}", [_file(tmp_path, f"{tag}.json")],
        subject=subject, artifact_type=artifact_type, annotations=annotations)
    assert res.status == 201
    assert res.subject_header == subject["digest"]
    assert res.manifest_digest is not None
    return res.manifest_digest


async def referrers(http: aiohttp.ClientSession, url: str, repo: str, subject: str,
                    artifact_type: str | None = None) -> tuple[int, dict, dict]:
    """A raw GET of the referrers of ``subject``: status, headers, parsed body."""
    params = {} if artifact_type is None else {"artifactType": artifact_type}
    async with http.get(f"{url}/v2/{repo}/referrers/{subject}", params=params) as r:
        return r.status, dict(r.headers), json.loads(await r.read())


async def put_manifest(http: aiohttp.ClientSession, url: str, repo: str,
                       doc: dict) -> tuple[aiohttp.ClientResponse, str]:
    raw = json.dumps(doc).encode()
    digest = str(Digest.of_bytes(raw))
    async with http.put(f"{url}/v2/{repo}/manifests/{digest}", data=raw,
                        headers={"Content-Type": doc["mediaType"]}) as r:
        await r.read()
        return r, digest


async def test_oras_attach_then_discover_through_proxy_and_agent(herd: Herd, http: aiohttp.ClientSession,
                                                                  tmp_path: Path) -> None:
    repo = "refs/attach"
    subject = await push_subject(herd, http, tmp_path, repo)
    sbom = await attach(herd, tmp_path, repo, "sbom", subject, SBOM, {"org.example.kind": "sbom"})
    signature = await attach(herd, tmp_path, repo, "sig", subject, SIGNATURE, {"org.example.kind": "signature"})

    for registry in (herd.proxy, herd.agents[0]):
        found = await asyncio.to_thread(oras_discover, registry.addr, repo, subject["digest"])
        assert found["status"] == 200, registry.name
        assert found["headers"]["Content-Type"] == OCI_INDEX
        assert "OCI-Filters-Applied" not in found["headers"]
        index = found["index"]
        assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
        by_digest = {d["digest"]: d for d in index["manifests"]}
        assert set(by_digest) == {sbom, signature}, registry.name
        assert by_digest[sbom]["artifactType"] == SBOM
        assert by_digest[sbom]["annotations"] == {"org.example.kind": "sbom"}
        assert by_digest[signature]["artifactType"] == SIGNATURE
        for digest, descriptor in by_digest.items():
            assert descriptor["mediaType"] == OCI_MANIFEST
            url = f"{registry.url}/v2/{repo}/manifests/{digest}"
            async with http.get(url, headers={"Accept": OCI_MANIFEST}) as r:
                assert r.status == 200, registry.name
                raw = await r.read()
            assert descriptor["size"] == len(raw) and str(Digest.of_bytes(raw)) == digest
            assert json.loads(raw)["subject"]["digest"] == subject["digest"]

        filtered = await asyncio.to_thread(oras_discover, registry.addr, repo, subject["digest"], SIGNATURE)
        assert filtered["status"] == 200
        assert filtered["headers"]["OCI-Filters-Applied"] == "artifactType"
        assert [d["digest"] for d in filtered["index"]["manifests"]] == [signature], registry.name

    # The lists live beside the tags in build-index's backend but are neither tags nor repositories.
    async with http.get(f"{herd.proxy.url}/v2/{repo}/tags/list") as r:
        assert (await r.json())["tags"] == ["sbom", "sig", "v1"]
    async with http.get(f"{herd.proxy.url}/v2/_catalog") as r:
        catalog = (await r.json())["repositories"]
    assert repo in catalog and not [name for name in catalog if "_referrers" in name]


async def test_artifact_type_field_wins_and_subject_may_not_exist(herd: Herd, http: aiohttp.ClientSession,
                                                                   tmp_path: Path) -> None:
    """A manifest's own artifactType is listed (not its empty config's type); a referrer may be
    pushed before its subject; an unknown subject has an empty list, not a 404."""
    repo = "refs/early"
    subject = await push_subject(herd, http, tmp_path, repo)  # puts the empty config and a layer in repo
    async with http.get(f"{herd.proxy.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}) as r:
        layer = (await r.json())["layers"][0]
    missing = str(Digest.of_bytes(os.urandom(16)))
    doc = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM,
        "config": {"mediaType": EMPTY_JSON, "digest": str(Digest.of_bytes(b"{}")), "size": 2},
        "layers": [layer],
        "subject": {"mediaType": OCI_MANIFEST, "digest": missing, "size": 123},
        "annotations": {"org.example.kind": "early"},
    }
    r, digest = await put_manifest(http, herd.proxy.url, repo, doc)
    assert r.status == 201
    assert r.headers["OCI-Subject"] == missing

    status, headers, index = await referrers(http, herd.agents[0].url, repo, missing)
    assert status == 200 and headers["Content-Type"] == OCI_INDEX
    assert index["manifests"] == [{
        "mediaType": OCI_MANIFEST, "digest": digest, "size": len(json.dumps(doc).encode()),
        "artifactType": SBOM, "annotations": {"org.example.kind": "early"},
    }]
    status, _, index = await referrers(http, herd.proxy.url, repo, subject["digest"])
    assert (status, index["manifests"]) == (200, [])
    status, _, index = await referrers(http, herd.proxy.url, "refs/never-pushed", missing)
    assert (status, index) == (200, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})

    # A manifest without subject answers no OCI-Subject.
    plain = dict(doc)
    del plain["subject"]
    r, _ = await put_manifest(http, herd.proxy.url, repo, plain)
    assert r.status == 201 and "OCI-Subject" not in r.headers


async def test_referrers_survive_a_build_index_restart(herd: Herd, http: aiohttp.ClientSession,
                                                       tmp_path: Path) -> None:
    repo = "refs/restart"
    subject = await push_subject(herd, http, tmp_path, repo)
    sbom = await attach(herd, tmp_path, repo, "sbom", subject, SBOM, {"org.example.kind": "sbom"})
    before = await referrers(http, herd.proxy.url, repo, subject["digest"])
    assert [d["digest"] for d in before[2]["manifests"]] == [sbom]

    await asyncio.to_thread(herd.supervisor.restart, "build-index")

    for registry in (herd.proxy, herd.agents[0]):
        status, _, index = await referrers(http, registry.url, repo, subject["digest"])
        assert status == 200
        assert index == before[2], registry.name


async def test_a_full_list_or_oversized_descriptor_is_denied(herd: Herd, http: aiohttp.ClientSession,
                                                            tmp_path: Path) -> None:
    """Raw pushes: oras-py takes a 403 for an authentication problem and retries for minutes."""
    repo = "refs/full"
    subject = await push_subject(herd, http, tmp_path, repo)
    async with http.get(f"{herd.proxy.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}) as r:
        doc = await r.json()
    doc["subject"] = subject

    async def push_referrer(tag: str, annotations: dict[str, str]) -> tuple[int, dict, str]:
        raw = json.dumps({**doc, "annotations": annotations}).encode()
        async with http.put(f"{herd.proxy.url}/v2/{repo}/manifests/{tag}", data=raw,
                            headers={"Content-Type": OCI_MANIFEST}) as r:
            return r.status, json.loads(await r.read() or b"{}"), str(Digest.of_bytes(raw))

    attached = set()
    for i in range(MAX_REFERRERS):
        status, _, digest = await push_referrer(f"r{i}", {"n": str(i)})
        assert status == 201
        attached.add(digest)
    assert (await push_referrer("r0", {"n": "0"}))[0] == 201  # a listed referrer again: same entry
    status, body, _ = await push_referrer("extra", {"n": "extra"})
    assert status == 403
    assert [e["code"] for e in body["errors"]] == ["DENIED"]
    async with http.get(f"{herd.proxy.url}/v2/{repo}/manifests/extra", headers={"Accept": OCI_MANIFEST}) as r:
        assert r.status == 404  # not tagged either
    status, _, index = await referrers(http, herd.proxy.url, repo, subject["digest"])
    assert {d["digest"] for d in index["manifests"]} == attached

    other = await push_subject(herd, http, tmp_path, "refs/big")
    async with http.get(f"{herd.proxy.url}/v2/refs/big/manifests/v1", headers={"Accept": OCI_MANIFEST}) as r:
        big = {**await r.json(), "subject": other, "annotations": {"blob": "x" * 4096}}
    async with http.put(f"{herd.proxy.url}/v2/refs/big/manifests/big", data=json.dumps(big).encode(),
                        headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 403
        assert [e["code"] for e in (await r.json())["errors"]] == ["DENIED"]
    status, _, index = await referrers(http, herd.proxy.url, "refs/big", other["digest"])
    assert (status, index["manifests"]) == (200, [])


async def test_bad_requests(herd: Herd, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{herd.proxy.url}/v2/refs/x/referrers/sha256:nothex") as r:
        assert r.status == 400
        assert [e["code"] for e in (await r.json())["errors"]] == ["DIGEST_INVALID"]
    async with http.delete(f"{herd.proxy.url}/v2/refs/x/referrers/{Digest.of_bytes(b'x')}") as r:
        assert r.status == 405
        assert [e["code"] for e in (await r.json())["errors"]] == ["UNSUPPORTED"]
    async with http.get(f"{herd.agents[0].url}/v2/Refs/x/referrers/{Digest.of_bytes(b'x')}") as r:
        assert r.status == 400
        assert [e["code"] for e in (await r.json())["errors"]] == ["NAME_INVALID"]


async def test_build_index_derives_referrers_from_the_origins(herd: Herd, http: aiohttp.ClientSession,
                                                              tmp_path: Path) -> None:
    """build-index lists nothing the origins do not hold with that subject: a PUT naming a
    manifest that is not there, or one whose subject is another, is refused."""
    repo = "refs/direct"
    subject = await push_subject(herd, http, tmp_path, repo)
    other = Digest.of_bytes(os.urandom(8))
    base = f"{herd.build_index.url}/referrers/{quote(repo, safe='')}"
    absent = Digest.of_bytes(os.urandom(8))
    async with http.put(f"{base}/{subject['digest']}/{absent}") as r:
        assert r.status == 400
        assert (await r.json())["missing"] == [str(absent)]
    sbom = await attach(herd, tmp_path, repo, "sbom", subject, SBOM, {})
    async with http.put(f"{base}/{other}/{sbom}") as r:  # it is a referrer of subject, not of other
        assert r.status == 400
        assert (await r.json())["missing"] == []
    async with http.put(f"{base}/{subject['digest']}/{subject['digest']}") as r:  # no subject at all
        assert r.status == 400
    async with http.get(f"{base}/{other}") as r:
        assert (r.status, await r.json()) == (200, {"manifests": []})
    async with http.put(f"{herd.build_index.url}/referrers/Bad/{other}/{sbom}") as r:
        assert r.status == 400
    async with http.get(f"{herd.build_index.url}/metrics") as r:
        text = await r.text()
    for result in ("ok", "missing", "invalid"):
        assert metric(text, "kraken_buildindex_referrer_puts_total", result=result) >= 1, result


@pytest.mark.parametrize("subject", ["sha256:abc", {"digest": "md5:0"}, {"mediaType": OCI_MANIFEST}])
async def test_malformed_subject_is_manifest_invalid(herd: Herd, http: aiohttp.ClientSession, tmp_path: Path,
                                                    subject: object) -> None:
    repo = "refs/malformed"
    await push_subject(herd, http, tmp_path, repo)
    async with http.get(f"{herd.proxy.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}) as r:
        doc = {**await r.json(), "subject": subject}
    async with http.put(f"{herd.proxy.url}/v2/{repo}/manifests/bad", data=json.dumps(doc).encode(),
                        headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 400
        assert [e["code"] for e in (await r.json())["errors"]] == ["MANIFEST_INVALID"]
        assert "OCI-Subject" not in r.headers
    async with http.get(f"{herd.proxy.url}/v2/{repo}/manifests/bad", headers={"Accept": OCI_MANIFEST}) as r:
        assert r.status == 404


@pytest.mark.parametrize("name_path", ["docker_tag", "identity"])
async def test_store_lists_one_subject_in_either_layout(tmp_path: Path, name_path: str) -> None:
    """The ``identity`` layout lists names with ``/`` for ``:``; entries of other subjects and
    tags of the repository are not referrers."""
    backend = BackendConfig("file", FileBackendConfig(root=str(tmp_path / "backend"), name_path=name_path))
    router = await build_router([NamespaceBackendConfig(namespace=".*", backend=backend)])
    try:
        store = ReferrerStore(router, max_referrers=2)
        subject, other = Digest.of_bytes(b"subject"), Digest.of_bytes(b"other")
        a, b = (ReferrerDescriptor(OCI_MANIFEST, Digest.of_bytes(x), 10, SBOM) for x in (b"a", b"b"))
        await TagStore(tmp_path / "cache", router, 0).put(parse_tag("refs/x:latest"), subject)
        await store.put("refs/x", subject, a)
        await store.put("refs/x", subject, b)
        await store.put("refs/x", other, a)
        await store.put("refs/x", subject, a)  # again: the same entry, not a third
        with pytest.raises(ReferrerLimit):
            await store.put("refs/x", subject, ReferrerDescriptor(OCI_MANIFEST, Digest.of_bytes(b"c"), 1))
        assert sorted(d.digest for d in await store.list("refs/x", subject)) == sorted([a.digest, b.digest])
        assert await store.list("refs/x", other) == [a]
        assert await store.list("refs/y", subject) == []
    finally:
        await router.close()
