"""BlockingPool: calls off the loop, bounded runs that stop at the first failure, and
cooperative cancellation (the callee's stop event, waiting for it when asked)."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kraken.backend.blocking import BlockingPool
from tests.support.waiting import until


async def test_call_runs_on_a_named_thread() -> None:
    pool = BlockingPool(1, "blocking-test")
    try:
        assert (await pool.call(lambda a, b=0: (threading.current_thread().name, a + b), 1, b=2)) == (
            "blocking-test_0", 3)
    finally:
        await pool.close()


async def test_run_bounded_keeps_order_and_the_limit() -> None:
    pool = BlockingPool(4, "blocking-test")
    running = peak = 0
    lock = threading.Lock()

    def job(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)  # the job's own work: long enough for jobs to overlap if the bound let them
        with lock:
            running -= 1
        return i

    try:
        assert await pool.run_bounded([lambda i=i: job(i) for i in range(8)], 2) == list(range(8))
        assert peak <= 2
    finally:
        await pool.close()


async def test_run_bounded_starts_nothing_after_a_failure() -> None:
    pool = BlockingPool(1, "blocking-test")
    started: list[int] = []

    def job(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("part 1 failed")
        return i

    try:
        with pytest.raises(ValueError, match="part 1"):
            await pool.run_bounded([lambda i=i: job(i) for i in range(4)], 1)
        assert started == [0, 1]
    finally:
        await pool.close()


async def test_cancelling_a_stoppable_call_sets_stop_and_can_wait_for_the_thread() -> None:
    pool = BlockingPool(1, "blocking-test")
    entered = threading.Event()
    ended = threading.Event()

    def transfer(stop: threading.Event) -> None:
        entered.set()
        assert stop.wait(10), "the cancellation never set the stop event"
        time.sleep(0.05)  # the chunk a real transfer finishes before it stops: what the cancel waits for
        ended.set()

    try:
        task = asyncio.create_task(pool.call_stoppable(transfer, wait_on_cancel=True))
        await asyncio.to_thread(entered.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended.is_set()  # the cancellation waited for the thread to stop
    finally:
        await pool.close()


async def test_close_stops_running_calls() -> None:
    pool = BlockingPool(1, "blocking-test")
    entered = threading.Event()

    def transfer(stop: threading.Event) -> bool:
        entered.set()
        return stop.wait(5)

    task = asyncio.create_task(pool.call_stoppable(transfer))
    await asyncio.to_thread(entered.wait, 5)
    await asyncio.wait_for(pool.close(), 2)
    assert await task is True


async def test_queued_counts_calls_no_thread_has_started() -> None:
    pool = BlockingPool(1, "queued-test")
    gate = threading.Event()
    try:
        first = asyncio.create_task(pool.call(gate.wait, 10))
        second = asyncio.create_task(pool.call(lambda: "done"))
        await until(lambda: pool.queued == 1, 10, "the second call waiting for the thread")
        gate.set()
        assert await second == "done" and await first
        assert pool.queued == 0
    finally:
        await pool.close()
