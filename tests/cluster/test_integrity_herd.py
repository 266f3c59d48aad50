"""Integrity through the whole herd (issue 9) as real processes: a corrupt file in the
origin's or an agent's cache never reaches a client; a killed origin's partial upload is gone
after its restart."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from kraken.core.digest import Digest
from tests.support.cluster import Herd, start_herd
from tests.support.metrics import metric
from tests.support.origin import MB, flip_byte, random_blob
from tests.support.waiting import until

REPO = "integrity/app"


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    """testfs, one origin, tracker, build-index, proxy and one agent, which falls back to
    HTTP after 3 s without P2P progress (30 s by default)."""
    h = start_herd(Path(tmp_path_factory.mktemp("herd")), agents=1,
                   overrides={"agent": {"download": {"fallback_after": "3s"}}})
    try:
        yield h
    finally:
        h.stop()


def cache_file(root: Path, digest: Digest) -> Path:
    return root / "cache" / "sha256" / digest.hex[:2] / digest.hex[2:4] / digest.hex


async def push_blob(http: aiohttp.ClientSession, herd: Herd, data: bytes) -> Digest:
    digest = Digest.of_bytes(data)
    async with http.post(f"{herd.proxy.url}/v2/{REPO}/blobs/uploads/", data=b"") as r:
        assert r.status == 202, await r.text()
        location = r.headers["Location"]
    async with http.put(location, params={"digest": str(digest)}, data=data) as r:
        assert r.status == 201, await r.text()
    return digest


async def written_back(http: aiohttp.ClientSession, herd: Herd, digest: Digest) -> bool:
    async with http.get(f"{herd.origin.url}/metrics") as r:
        pending = metric(await r.text(), "kraken_origin_writeback_pending")
    async with http.head(
        f"{herd.testfs.url}/files/docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data"
    ) as r:
        return pending == 0 and r.status == 200


async def quarantined(http: aiohttp.ClientSession, url: str, component: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        return metric(await r.text(), f"kraken_{component}_blobs_quarantined_total")



async def test_proxy_serves_the_right_bytes_of_a_blob_corrupt_in_the_origin_cache(
    herd: Herd, http: aiohttp.ClientSession
) -> None:
    data, _ = random_blob(2 * MB + 1)
    digest = await push_blob(http, herd, data)
    await until(lambda: written_back(http, herd, digest), what="write-back")
    before = await quarantined(http, herd.origin.url, "origin")
    flip_byte(cache_file(herd.workdir / "origin", digest), MB)

    async with http.get(f"{herd.proxy.url}/v2/{REPO}/blobs/{digest}") as r:
        assert r.status == 200
        assert await r.read() == data
    assert await quarantined(http, herd.origin.url, "origin") == before + 1


async def test_agent_pulls_the_right_bytes_of_a_blob_corrupt_in_the_origin_cache(
    herd: Herd, http: aiohttp.ClientSession
) -> None:
    data, _ = random_blob(3 * MB + 5)
    digest = await push_blob(http, herd, data)
    await until(lambda: written_back(http, herd, digest), what="write-back")
    flip_byte(cache_file(herd.workdir / "origin", digest), 2 * MB)

    agent = herd.agents[0]
    started = asyncio.get_running_loop().time()
    async with http.get(f"{agent.url}/v2/{REPO}/blobs/{digest}") as r:
        assert r.status == 200
        assert await r.read() == data
    assert asyncio.get_running_loop().time() - started < 15


async def test_agent_downloads_again_a_blob_corrupt_in_its_own_cache(herd: Herd, http: aiohttp.ClientSession) -> None:
    data, _ = random_blob(MB + 3)
    digest = await push_blob(http, herd, data)
    agent = herd.agents[0]
    url = f"{agent.url}/v2/{REPO}/blobs/{digest}"
    async with http.get(url) as r:
        assert r.status == 200 and await r.read() == data
    flip_byte(cache_file(herd.workdir / agent.name, digest), 17)

    async with http.get(url) as r:
        assert r.status == 200
        assert await r.read() == data
    assert await quarantined(http, f"http://127.0.0.1:{agent.health_port}", "agent") == 1


async def test_origin_killed_mid_upload_restarts_with_no_partial_upload(
    herd: Herd, http: aiohttp.ClientSession
) -> None:
    data, digest = random_blob(12 * MB)  # half of it is more than one write batch (4 MiB)
    uploads_dir = herd.workdir / "origin" / "uploads"
    uploads = f"{herd.origin.url}/namespace/{REPO.replace('/', '%2F')}/blobs/{digest}/uploads"
    async with http.post(uploads) as r:
        assert r.status == 200
        uid = r.headers["Location"]
    stalled = asyncio.Event()

    async def half_then_stall() -> AsyncIterator[bytes]:
        yield data[: len(data) // 2]
        await stalled.wait()

    patch = asyncio.ensure_future(http.patch(f"{uploads}/{uid}", data=half_then_stall(),
                                             headers={"Content-Range": f"0-{len(data)}"}))
    try:
        await until(lambda: (uploads_dir / uid).exists() and (uploads_dir / uid).stat().st_size > 0,
                    what="part of the upload on disk")
        await asyncio.to_thread(herd.supervisor.kill, herd.origin.name)
        await asyncio.gather(patch, return_exceptions=True)
        assert (uploads_dir / uid).exists()
        await asyncio.to_thread(herd.supervisor.start, herd.origin)
        assert os.listdir(uploads_dir) == []
    finally:
        stalled.set()
        patch.cancel()


async def test_proxy_upload_failing_with_disk_full_is_an_oci_error_and_leaves_no_file(
    herd: Herd, http: aiohttp.ClientSession
) -> None:
    data, digest = random_blob(5 * MB)
    async with http.post(f"{herd.proxy.url}/v2/{REPO}/blobs/uploads/", data=b"") as r:
        assert r.status == 202
        location = r.headers["Location"]
        uid = r.headers["Docker-Upload-UUID"]
    staged = herd.workdir / "proxy" / "uploads" / uid
    staged.unlink()
    staged.symlink_to("/dev/full")

    async with http.patch(location, data=data) as r:
        assert r.status == 507
        body = await r.json()
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert "No space left on device" in body["errors"][0]["detail"]
    assert not staged.exists() and not staged.is_symlink()
    async with http.put(location, params={"digest": str(digest)}) as r:
        assert r.status == 404 and (await r.json())["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


async def test_seeded_file_failing_a_piece_hash_is_quarantined(
    herd: Herd, http: aiohttp.ClientSession
) -> None:
    """A corruption the stat cannot see (size and mtime kept) of a file the origin verified
    already: the agent's first piece request fails its hash at the origin, which quarantines
    the file; the agent's HTTP fallback then gets the good copy the origin fetched again."""
    data, _ = random_blob(3 * MB + 9)
    digest = await push_blob(http, herd, data)
    await until(lambda: written_back(http, herd, digest), what="write-back")
    ns = REPO.replace("/", "%2F")
    async with http.get(f"{herd.origin.url}/namespace/{ns}/blobs/{digest}") as r:
        assert r.status == 200 and await r.read() == data  # verified: the origin keeps a record
    before = await quarantined(http, herd.origin.url, "origin")
    path = cache_file(herd.workdir / "origin", digest)
    st = path.stat()
    flip_byte(path, MB + 100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    started = asyncio.get_running_loop().time()
    async with http.get(f"{herd.agents[0].url}/v2/{REPO}/blobs/{digest}") as r:
        assert r.status == 200
        assert await r.read() == data
    assert asyncio.get_running_loop().time() - started < 15
    assert await quarantined(http, herd.origin.url, "origin") == before + 1


async def test_agent_start_removes_partial_downloads(herd: Herd, http: aiohttp.ClientSession) -> None:
    agent = herd.agents[0]
    root = herd.workdir / agent.name
    leftovers = [root / "uploads" / "0123456789abcdef0123456789abcdef", root / "download" / ("ab" * 32)]
    await asyncio.to_thread(herd.supervisor.stop, agent.name)
    for path in leftovers:
        path.write_bytes(b"half a blob")
    await asyncio.to_thread(herd.supervisor.start, agent)
    assert [p for p in leftovers if p.exists()] == []
