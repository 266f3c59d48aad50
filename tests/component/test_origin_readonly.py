"""An origin with a namespace routed to a read-only backend (here ``http``; the pull-through
``registry_blob`` behaves the same): blobs are read from it lazily, pushes to it are refused
(405) rather than cached with a write-back that could never succeed, no write-back is ever
queued for it, and a fetch that failed is answered 503 with its reason for a while instead
of an endless 202."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kraken.http.client import HTTPStatusError
from tests.support.origin import Origin, OriginFactory, random_blob
from tests.support.waiting import until

PULL = "pull/app"


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.gets = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            self.gets += 1
        path = self.root / request.match_info["name"]
        return web.FileResponse(path) if path.is_file() else web.Response(status=404)


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[tuple[Files, int]]:
    files = Files(tmp_path / "files")
    files.root.mkdir()
    app = web.Application()
    app.router.add_get("/blobs/{name}", files.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield files, server.port
    await server.close()


@pytest.fixture(params=[False, True], ids=["unlimited", "bandwidth-limited"])
async def origin(start_origin: OriginFactory, testfs_port: int, files: tuple[Files, int],
                 request: pytest.FixtureRequest) -> Origin:
    """The pull-through namespace with and without ``bandwidth:`` (which wraps its backend:
    the wrapper must still say read-only)."""
    url = "http" + f"://127.0.0.1:{files[1]}/blobs/%s"
    bandwidth = {"enable": request.param, "ingress_bits_per_sec": 1 << 30}
    backends = [{"namespace": "pull/.*", "backend": {"http": {"download_url": url}}, "bandwidth": bandwidth},
                {"namespace": ".*", "backend": {"testfs": {"addr": f"127.0.0.1:{testfs_port}",
                                                           "name_path": "sharded_docker_blob"}}}]
    return await start_origin(testfs_port, backends=backends)


async def test_pushes_to_a_read_only_namespace_are_refused(origin: Origin) -> None:
    data, digest = random_blob(1000)
    with pytest.raises(HTTPStatusError) as refused:
        await origin.client.upload_bytes(PULL, digest, data)
    assert refused.value.status == 405 and "read-only" in refused.value.message
    assert not origin.cached(digest)
    await origin.client.upload_bytes("other/app", digest, data)  # other namespaces take pushes


async def test_pulled_through_blobs_queue_no_write_back(origin: Origin, files: tuple[Files, int]) -> None:
    data, digest = random_blob(100_000)
    (files[0].root / digest.hex).write_bytes(data)
    assert await origin.client.read_bytes(PULL, digest) == data
    assert origin.cached(digest)
    assert await origin.status("HEAD", origin.blob_url(digest, "pull%2Fapp")) == 200  # joins the namespace
    assert await origin.service.writeback.pending_digests() == set()


async def test_a_failed_fetch_is_a_503_with_its_reason(origin: Origin, files: tuple[Files, int]) -> None:
    data, digest = random_blob(10_000)
    (files[0].root / digest.hex).write_bytes(data[:-1] + b"!")  # the backend's copy is corrupt
    url = origin.blob_url(digest, "pull%2Fapp")
    assert await origin.status("GET", url) == 202

    async def refused() -> bool:
        async with origin.session.get(url) as resp:
            return resp.status == 503 and "fails verification" in (await resp.json())["error"]

    await until(refused, what="the failed fetch to be reported")
    gets = files[0].gets
    assert await refused() and files[0].gets == gets  # not asked again meanwhile
    assert not origin.cached(digest)
    assert await origin.service.writeback.pending_digests() == set()


async def test_a_failed_fetch_in_one_namespace_says_nothing_of_another(
    origin: Origin, files: tuple[Files, int],
) -> None:
    """The pull-through's corrupt copy is remembered for ``pull/*`` only: the same digest in a
    namespace routed to testfs is looked up there (which lacks it: 404), not refused with the
    other backend's reason."""
    data, digest = random_blob(10_000)
    (files[0].root / digest.hex).write_bytes(data[:-1] + b"!")
    url = origin.blob_url(digest, "pull%2Fapp")
    assert await origin.status("GET", url) == 202

    async def refused() -> bool:
        async with origin.session.get(url) as resp:
            return resp.status == 503

    await until(refused, what="the failed fetch to be reported")
    assert await origin.status("GET", origin.blob_url(digest, "other%2Fapp")) == 404


async def test_a_write_back_queued_before_the_namespace_became_read_only_is_dropped(origin: Origin) -> None:
    """A persisted task from before a config change routed ``pull/*`` to a pull-through (put
    in the queue directly: ``enqueue`` no longer takes one) is dropped, not retried for ever."""
    data, digest = random_blob(1000)
    await origin.client.upload_bytes("other/app", digest, data)  # cached, so only the backend can refuse
    await origin.service.writeback.worker.add(json.dumps([PULL, str(digest)]),
                                              {"namespace": PULL, "digest": str(digest)}, 0)

    async def dropped() -> bool:
        return digest not in await origin.service.writeback.pending_digests()

    await until(dropped, what="the write-back to the read-only namespace to be dropped")
