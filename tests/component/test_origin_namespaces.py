"""A blob that becomes part of a namespace without being uploaded to it still reaches that
namespace's storage backend.

Backends are chosen per namespace, so a blob pushed to one namespace is in that namespace's
backend only. A client that finds it under another namespace (a HEAD before its push, a
cross-repository mount through the proxy) skips the upload: the origin then queues the
write-back to the other namespace's backend itself. Origins run in-process; every backend is
a real testfs process.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from kraken.devcluster import Supervisor, free_port
from kraken.persisted import PersistedQueue
from kraken.proxy.config import BuildIndexConfig, ProxyConfig, StoreConfig
from kraken.proxy.server import create_proxy_app
from kraken.ring import RingConfig
from tests.support.metrics import metric
from tests.support.origin import MB, Origin, OriginFactory, Testfs, drained, random_blob, start_testfs
from tests.support.waiting import until

ALPHA, BETA = "alpha/app", "beta/app"

BackendFactory = Callable[..., Awaitable[tuple[str, Testfs]]]


def routed(alpha_port: int, beta_port: int) -> list[dict[str, Any]]:
    """``alpha/...`` to one testfs, ``beta/...`` to another (and nothing else anywhere)."""
    return [
        {"namespace": f"{prefix}/.*", "backend": {"testfs": {
            "addr": f"127.0.0.1:{port}", "name_path": "sharded_docker_blob"}}}
        for prefix, port in (("alpha", alpha_port), ("beta", beta_port))
    ]


@pytest.fixture
def start_backend(
    supervisor: Supervisor, session: aiohttp.ClientSession, tmp_path: Path, request: pytest.FixtureRequest
) -> BackendFactory:
    """Start a testfs process: ``name, testfs = await start_backend(label, port=None)``; the
    process name is unique in the module's supervisor so a test can stop it by that name."""

    async def start(label: str, port: int | None = None) -> tuple[str, Testfs]:
        name = f"{request.node.name}-{label}"
        proc = await asyncio.to_thread(start_testfs, supervisor, name, port or free_port(), tmp_path / label)
        return name, Testfs(proc.port, session)

    return start


async def head(origin: Origin, ns: str, digest: Any) -> int:
    return await origin.status("HEAD", origin.blob_url(digest, ns))


async def test_a_blob_found_by_head_in_another_namespace_is_written_to_its_backend(
    start_origin: OriginFactory, start_backend: BackendFactory, supervisor: Supervisor
) -> None:
    alpha_name, alpha = await start_backend("alpha")
    _, beta = await start_backend("beta")
    origin = await start_origin(alpha.port, backends=routed(alpha.port, beta.port))
    data, digest = random_blob(MB + 7)
    await origin.client.upload_bytes(ALPHA, digest, data)
    assert await until(lambda: alpha.read(digest), what="write-back to alpha's backend") == data
    assert not await beta.exists(digest)

    assert await head(origin, BETA, digest) == 200  # a client pushing to beta now skips the blob
    assert await until(lambda: beta.read(digest), what="write-back to beta's backend") == data

    assert await until(lambda: origin.force_cleanup(0), what="eviction once written back") == [str(digest)]
    # With alpha's backend gone, beta's backend is the only place the blob can come from.
    await asyncio.to_thread(supervisor.stop, alpha_name)
    assert await origin.client.read_bytes(BETA, digest) == data
    assert metric(await origin.metrics(), "kraken_origin_backend_fetches_total", result="ok") == 1


async def test_a_head_pins_the_blob_until_the_namespace_backend_has_it(
    start_origin: OriginFactory, start_backend: BackendFactory
) -> None:
    _, alpha = await start_backend("alpha")
    beta_port = free_port()  # beta's backend is down for now
    origin = await start_origin(alpha.port, backends=routed(alpha.port, beta_port))
    data, digest = random_blob(200_000)
    await origin.client.upload_bytes(ALPHA, digest, data)
    await until(lambda: alpha.exists(digest), what="write-back to alpha's backend")

    assert await head(origin, BETA, digest) == 200  # answered from the cache: no backend needed
    await until(lambda: _writeback_failed(origin), what="a failed write-back to beta's backend")
    assert await origin.force_cleanup(0) == []  # the only copy beta can get: not evictable
    assert origin.cached(digest)

    _, beta = await start_backend("beta", port=beta_port)
    assert await until(lambda: beta.read(digest), what="write-back once beta's backend is up") == data
    assert await until(lambda: origin.force_cleanup(0), what="eviction") == [str(digest)]


async def _writeback_failed(origin: Origin) -> bool:
    return metric(await origin.metrics(), "kraken_origin_writeback_failures_total") > 0


async def test_repeated_heads_queue_one_write_back_and_gets_none(
    start_origin: OriginFactory, testfs_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = await start_origin(testfs_port)
    data, digest = random_blob(50_000)
    await origin.client.upload_bytes(ALPHA, digest, data)
    queue = origin.service.writeback.worker.queue
    await until(lambda: drained(queue), what="the push's write-back")
    added = _count_adds(queue, monkeypatch)

    statuses = await asyncio.gather(*(head(origin, BETA, digest) for _ in range(20)))
    assert statuses == [200] * 20
    assert added == [[BETA, str(digest)]]  # concurrent first HEADs share one durable insert
    for _ in range(5):
        assert await head(origin, BETA, digest) == 200
        assert await origin.client.read_bytes(BETA, digest) == data
        assert await origin.client.read_bytes("gamma/app", digest) == data  # a GET adds nothing
    assert await head(origin, ALPHA, digest) == 200  # the push recorded alpha already
    assert added == [[BETA, str(digest)]]


def _count_adds(queue: PersistedQueue, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record the key of every task added to ``queue`` from now on (they are still added)."""
    added: list[Any] = []
    add = queue.add

    async def counting(key: str, payload: dict[str, Any], delay: float = 0.0) -> bool:
        added.append(json.loads(key))
        return await add(key, payload, delay)

    monkeypatch.setattr(queue, "add", counting)
    return added


async def test_a_blob_evicted_while_its_write_back_is_queued_is_not_claimed(
    start_origin: OriginFactory, start_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep may delete a blob between the HEAD's look at the cache and its write-back task:
    the origin must then answer as for a missing blob, so the client uploads it."""
    _, alpha = await start_backend("alpha")
    _, beta = await start_backend("beta")
    origin = await start_origin(alpha.port, backends=routed(alpha.port, beta.port))
    data, digest = random_blob(10_000)
    await origin.client.upload_bytes(ALPHA, digest, data)
    queue = origin.service.writeback.worker.queue
    await until(lambda: drained(queue), what="the push's write-back")
    add = queue.add

    async def add_then_evict(key: str, payload: dict[str, Any], delay: float = 0.0) -> bool:
        added = await add(key, payload, delay)
        origin.service.store.delete(digest)  # what a sweep that read the queues just before does
        return added

    monkeypatch.setattr(queue, "add", add_then_evict)
    assert await head(origin, BETA, digest) == 404  # beta's backend lacks it: the client uploads
    monkeypatch.setattr(queue, "add", add)
    await origin.client.upload_bytes(BETA, digest, data)
    assert await until(lambda: beta.read(digest), what="write-back of the re-upload") == data


@pytest.fixture
async def proxy_url(tmp_path: Path) -> AsyncIterator[Callable[[Origin], Awaitable[str]]]:
    """Start an in-process proxy in front of one origin (blob routes need no build-index)."""
    servers: list[TestServer] = []

    async def start(origin: Origin) -> str:
        config = ProxyConfig(
            store=StoreConfig(str(tmp_path / "proxy")), origins=RingConfig([origin.addr]),
            build_index=BuildIndexConfig(f"127.0.0.1:{free_port()}"),
        )
        server = TestServer(create_proxy_app(config), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def test_a_mount_through_the_proxy_writes_the_blob_to_the_target_backend(
    start_origin: OriginFactory, start_backend: BackendFactory, session: aiohttp.ClientSession,
    proxy_url: Callable[[Origin], Awaitable[str]],
) -> None:
    _, alpha = await start_backend("alpha")
    _, beta = await start_backend("beta")
    origin = await start_origin(alpha.port, backends=routed(alpha.port, beta.port))
    base = await proxy_url(origin)
    data, digest = random_blob(300_000)
    async with session.post(f"{base}/v2/{ALPHA}/blobs/uploads/", params={"digest": str(digest)}, data=data) as r:
        assert r.status == 201, await r.text()
    await until(lambda: alpha.exists(digest), what="write-back to alpha's backend")

    mount = {"mount": str(digest), "from": ALPHA}
    async with session.post(f"{base}/v2/{BETA}/blobs/uploads/", params=mount) as r:
        assert r.status == 201, await r.text()  # mounted: the client sends nothing
    assert await until(lambda: beta.read(digest), what="write-back to beta's backend") == data
    assert await until(lambda: origin.force_cleanup(0), what="eviction") == [str(digest)]
    async with session.get(f"{base}/v2/{BETA}/blobs/{digest}") as r:
        assert r.status == 200 and await r.read() == data
