"""The SQLite retry queue and its worker: durability, uniqueness, due times, backoff."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kraken.persisted import PersistedQueue, RetryWorker, Task
from kraken.tasks import TaskOwner
from tests.support.waiting import until


async def empty(queue: PersistedQueue) -> bool:
    return await queue.count() == 0


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[PersistedQueue]:
    q = await PersistedQueue.open(tmp_path / "q.db")
    yield q
    await q.close()


async def test_add_is_unique_by_key(queue: PersistedQueue) -> None:
    assert await queue.add("k", {"n": 1})
    assert not await queue.add("k", {"n": 2})
    [task] = await queue.all()
    assert (task.key, task.payload, task.attempts) == ("k", {"n": 1}, 0)


async def test_due_respects_delay_and_retry_later(queue: PersistedQueue) -> None:
    await queue.add("now", {})
    await queue.add("later", {}, delay=60)
    assert [t.key for t in await queue.due()] == ["now"]
    assert [t.key for t in await queue.due(now=time.time() + 61)] == ["now", "later"]

    await queue.retry_later("now", backoff=30, error="boom")
    assert await queue.due() == []
    task = await queue.get("now")
    assert task is not None and task.attempts == 1 and task.next_attempt > time.time() + 25
    assert await queue.next_due_after(time.time()) == pytest.approx(task.next_attempt)

    await queue.done("now")
    assert await queue.get("now") is None
    assert await queue.count() == 1


async def test_tasks_survive_reopening(tmp_path: Path) -> None:
    q = await PersistedQueue.open(tmp_path / "q.db")
    await q.add("a", {"digest": "sha256:x"})
    await q.retry_later("a", backoff=0)
    await q.close()

    q = await PersistedQueue.open(tmp_path / "q.db")
    try:
        [task] = await q.due()
        assert (task.key, task.payload, task.attempts) == ("a", {"digest": "sha256:x"}, 1)
    finally:
        await q.close()


def test_backoff_doubles_up_to_the_cap(queue: PersistedQueue) -> None:
    async def never(_: Task) -> None:
        raise AssertionError

    worker = RetryWorker("t", queue, never, retry_interval=1, max_retry_interval=5)
    assert [worker.backoff(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


async def test_worker_retries_failures_until_the_handler_succeeds(queue: PersistedQueue) -> None:
    calls: list[tuple[str, int]] = []
    counts: list[int] = []

    async def flaky(task: Task) -> None:
        calls.append((task.key, task.attempts))
        if task.attempts < 2:
            raise RuntimeError("backend down")

    owner = TaskOwner("test")
    worker = RetryWorker("t", queue, flaky, retry_interval=0.01, max_retry_interval=0.05, on_count=counts.append)
    worker.start(owner)
    try:
        await worker.add("job", {"x": 1})

        await until(lambda: empty(queue))
        assert calls == [("job", 0), ("job", 1), ("job", 2)]
        await until(lambda: counts[-1] == 0)
    finally:
        await owner.close()


async def test_worker_runs_tasks_queued_before_it_started_and_wakes_for_new_ones(queue: PersistedQueue) -> None:
    await queue.add("old", {})
    seen: list[str] = []

    async def record(task: Task) -> None:
        seen.append(task.key)

    owner = TaskOwner("test")
    # A long retry interval: only wake-ups (not polling) can make the new task run quickly.
    worker = RetryWorker("t", queue, record, retry_interval=3600, max_retry_interval=3600)
    worker.start(owner)
    try:
        await until(lambda: seen == ["old"])
        await worker.add("new", {})
        await until(lambda: seen == ["old", "new"])
        await worker.add("delayed", {}, delay=3600)
        assert await queue.count() == 1 and seen == ["old", "new"]
    finally:
        await owner.close()


async def test_worker_limits_concurrency(queue: PersistedQueue) -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    async def slow(_: Task) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    owner = TaskOwner("test")
    worker = RetryWorker("t", queue, slow, retry_interval=1, max_retry_interval=1, concurrency=2)
    worker.start(owner)
    try:
        for i in range(5):
            await worker.add(f"k{i}", {})
        await until(lambda: running == 2)
        release.set()

        await until(lambda: empty(queue))
        assert peak == 2
    finally:
        await owner.close()
