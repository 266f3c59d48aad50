"""TagStore in write-back mode (``tag_store.write_through: false``) with its real persisted
queue and worker, over an in-memory backend that can refuse writes or hold them."""
from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from kraken.backend import BackendError, BackendRouter
from kraken.backend.router import Route
from kraken.buildindex.config import TagStoreConfig
from kraken.buildindex.tags import parse_tag
from kraken.buildindex.tagstore import TagStore
from kraken.buildindex.tagwriteback import PendingTags, TagWriteBack
from kraken.core.digest import Digest
from kraken.metrics import Metrics
from kraken.persisted import PersistedQueue
from kraken.tasks import TaskOwner
from tests.support.waiting import until
from tests.unit.test_buildindex_unit import FakeBackend

TAG = parse_tag("app/web:latest")
D1, D2 = Digest.of_bytes(b"one"), Digest.of_bytes(b"two")


class GatedBackend(FakeBackend):
    """Writes fail while ``refuse`` (a backend refusing the credentials) and wait for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.uploading: list[bytes] = []

    async def upload_bytes(self, namespace: str, name: str, data: bytes) -> None:
        if self.refuse:
            raise BackendError("403: credentials refused")
        self.uploading.append(data)
        await self.gate.wait()
        await super().upload_bytes(namespace, name, data)



@pytest.fixture
def backend() -> GatedBackend:
    return GatedBackend()


async def open_store(stack: AsyncExitStack, root: Path, backend: GatedBackend,
                     write_through: bool = False) -> tuple[TagStore, Metrics]:
    """A started store (queue, worker) that ``stack`` closes."""
    queue = await PersistedQueue.open(root / "tag_writeback.db")
    stack.push_async_callback(queue.close)
    metrics = Metrics("build-index")
    config = TagStoreConfig(write_through=write_through, retry_interval=0.02, max_retry_interval=0.05)
    writeback = TagWriteBack(PendingTags(root), queue, config, metrics)
    router = BackendRouter([Route(re.compile(".*"), backend, "fake")])  # type: ignore[list-item]
    store = TagStore(root, router, 0, writeback)
    owner = TaskOwner("test")
    stack.push_async_callback(owner.close)
    await writeback.start(owner, store.write_pending)
    return store, metrics


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def test_put_while_backend_refuses_is_served_then_written_back(
        tmp_path: Path, backend: GatedBackend, stack: AsyncExitStack) -> None:
    store, metrics = await open_store(stack, tmp_path, backend)
    backend.refuse = True
    await store.put(TAG, D1)
    lookup = await store.get(TAG)
    assert (lookup.digest, lookup.source) == (D1, "pending")
    assert await store.list("app/web:") == [str(TAG)]  # the backend lists nothing yet
    await until(lambda: sample(metrics, "kraken_buildindex_tag_writeback_failures_total") >= 2, 10)
    assert sample(metrics, "kraken_buildindex_tag_writeback_pending") == 1

    backend.refuse = False
    await until(lambda: backend.objects.get(str(TAG)) == str(D1).encode(), 10)
    await until(lambda: sample(metrics, "kraken_buildindex_tag_writeback_pending") == 0, 10)
    lookup = await store.get(TAG)
    assert (lookup.digest, lookup.source) == (D1, "backend")
    assert sample(metrics, "kraken_buildindex_tag_writebacks_total") == 1


async def test_repush_during_a_slow_write_back_wins(tmp_path: Path, backend: GatedBackend,
                                                    stack: AsyncExitStack) -> None:
    store, _ = await open_store(stack, tmp_path, backend)
    backend.gate.clear()
    await store.put(TAG, D1)
    await until(lambda: backend.uploading == [str(D1).encode()], 10)
    await asyncio.wait_for(store.put(TAG, D2), 2)  # answered at once, the first write still hangs
    assert (await store.get(TAG)).digest == D2
    backend.gate.set()
    await until(lambda: backend.objects.get(str(TAG)) == str(D2).encode() and not store_pending(tmp_path), 10)
    assert (await store.get(TAG)).digest == D2


def store_pending(root: Path) -> list[Path]:
    return list((root / "pending").glob("*/*"))


async def test_pending_tags_survive_a_restart_and_write_through_clears_them(
        tmp_path: Path, backend: GatedBackend) -> None:
    backend.refuse = True
    async with AsyncExitStack() as stack:
        store, _ = await open_store(stack, tmp_path, backend)
        await store.put(TAG, D1)
    assert len(store_pending(tmp_path)) == 1

    async with AsyncExitStack() as stack:  # the next run, still refused: answers the pending copy
        store, metrics = await open_store(stack, tmp_path, backend)
        assert (await store.get(TAG)).source == "pending"
        assert sample(metrics, "kraken_buildindex_tag_writeback_pending") == 1

    backend.refuse = False
    async with AsyncExitStack() as stack:  # switched to write-through: the new PUT wins
        backend.gate.clear()  # hold the leftover write-back so the PUT comes first
        store, _ = await open_store(stack, tmp_path, backend, write_through=True)
        await until(lambda: backend.uploading == [str(D1).encode()], 10)
        put = asyncio.ensure_future(store.put(TAG, D2))
        backend.gate.set()
        await put
        assert backend.objects[str(TAG)] == str(D2).encode()
        assert store_pending(tmp_path) == []
        assert (await store.get(TAG)).digest == D2
