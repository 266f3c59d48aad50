"""End to end on a GCS bucket (a real fake-gcs-server): origin and build-index route the
``gcs/.*`` namespaces to the bucket; an image pushed through the proxy lands there in the
Docker-distribution layout, and is pulled back intact after every cache in the herd is wiped."""
from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kraken.core.digest import Digest
from kraken.registry.manifest import DOCKER_MANIFEST
from tests.support.cluster import Herd, start_herd
from tests.support.gcs import FakeGcs, fake_gcs_server
from tests.support.origin import MB, random_blob
from tests.support.proxy import Proxy, manifest_for
from tests.support.waiting import until

BUCKET = "kraken-e2e"
ROOT = "kraken"
REPO = "gcs/app"
BLOBS = f"{ROOT}/docker/registry/v2/blobs/sha256"
TAGS = f"{ROOT}/docker/registry/v2/repositories"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    with fake_gcs_server(tmp_path_factory.mktemp("fake-gcs")) as server:
        server.create_bucket(BUCKET)
        yield server


def routes(gcs: FakeGcs, name_path: str, other_root: Path) -> list[dict[str, Any]]:
    """``gcs/.*`` to the bucket (Kraken's keys, anonymous on the emulator), the rest to a directory."""
    bucket = {"bucket": BUCKET, "endpoint": gcs.url, "root_directory": f"/{ROOT}/", "name_path": name_path,
              "upload_part_size": "1MiB"}
    return [{"namespace": "gcs/.*", "backend": {"gcs": bucket}},
            {"namespace": ".*", "backend": {"file": {"root": str(other_root), "name_path": name_path}}}]


@pytest.fixture(scope="module")
def herd(gcs: FakeGcs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    workdir = Path(tmp_path_factory.mktemp("herd"))
    h = start_herd(workdir, overrides={
        "origin": {"backends": routes(gcs, "sharded_docker_blob", workdir / "files" / "blobs")},
        "build-index": {"backends": routes(gcs, "docker_tag", workdir / "files" / "tags")},
    })
    try:
        yield h
    finally:
        h.stop()



def blob_key(digest: Digest) -> str:
    return f"{BLOBS}/{digest.hex[:2]}/{digest.hex}/data"


def wipe_and_restart(herd: Herd, name: str) -> None:
    """Stop ``name``, delete its whole store, start it again: nothing cached survives."""
    herd.supervisor.stop(name)
    shutil.rmtree(herd.workdir / name)
    herd.supervisor.start(herd[name])


async def test_push_lands_in_the_bucket_and_pulls_back_after_the_caches_are_wiped(
    gcs: FakeGcs, herd: Herd, http: aiohttp.ClientSession
) -> None:
    proxy = Proxy(herd, http)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer, _ = random_blob(5 * MB + 7)  # several 1 MiB chunks on the way up
    cd = await proxy.push_monolithic(REPO, config)
    ld = await proxy.push_chunked(REPO, layer, chunk=MB)
    raw = manifest_for((cd, len(config)), [(ld, len(layer))], DOCKER_MANIFEST)
    md = Digest.of_bytes(raw)
    r = await proxy.put_manifest(REPO, "v1", raw, DOCKER_MANIFEST)
    assert r.status == 201

    # The bucket holds what distribution itself would: blobs under their sharded path, the tag
    # as a link file naming the manifest's digest.
    expected = {blob_key(cd): len(config), blob_key(ld): len(layer), blob_key(md): len(raw)}
    tag_key = f"{TAGS}/{REPO}/_manifests/tags/v1/current/link"

    def in_bucket() -> bool:
        objects = gcs.objects(BUCKET)
        return all(objects.get(k) == size for k, size in expected.items()) and tag_key in objects

    await until(lambda: asyncio.to_thread(in_bucket), 60, "the image in the bucket")
    assert await asyncio.to_thread(gcs.read, BUCKET, blob_key(ld)) == layer
    assert (await asyncio.to_thread(gcs.read, BUCKET, tag_key)).decode() == str(md)
    other_route = [p for p in (herd.workdir / "files").rglob("*") if p.is_file()]
    assert other_route == [], "gcs/ objects must not reach the other route"

    for name in ("origin", "build-index", "proxy"):
        await asyncio.to_thread(wipe_and_restart, herd, name)

    async with proxy.request("GET", f"/v2/{REPO}/manifests/v1", headers={"Accept": DOCKER_MANIFEST}) as r:
        assert r.status == 200, await r.text()
        assert await r.read() == raw
    for digest, data in ((cd, config), (ld, layer)):
        async with proxy.request("GET", f"/v2/{REPO}/blobs/{digest}") as r:
            assert r.status == 200, await r.text()
            assert await r.read() == data
    # The wiped origin read them from the bucket (the lazy fetch), not from anywhere else.
    since_restart = herd.origin.log_path.read_bytes()[herd.origin.log_offset:].decode(errors="replace")
    for digest in (cd, ld):
        assert f"blob fetched namespace={REPO} digest={digest} source=ok" in since_restart
