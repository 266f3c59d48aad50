"""Blocking library calls (boto3, google-cloud-storage) run off the event loop, on a bounded pool.

A storage client that blocks must never run on the loop, and one backend must never have more
calls in flight than it was configured for, however many transfers the origin runs: each
:class:`BlockingPool` is a named thread pool of fixed size that calls are awaited on. A backend
keeps two: one for transfers (a GCS upload holds its thread for a whole blob) and a small one
for metadata calls (stat, list), so a readiness probe or a stat never queues behind transfers
(under many concurrent write-backs ``/readiness`` would otherwise time out and flap to 503).

Cancellation: a call still queued when its caller is cancelled never starts. A running one
cannot be interrupted; :meth:`BlockingPool.call_stoppable` hands the callee a
:class:`threading.Event` it polls (between chunks), set on cancellation and on :meth:`close`.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

#: Threads of a backend's metadata pool: enough for the stats of a burst of lazy fetches to
#: overlap, few enough to cost nothing idle.
METADATA_WORKERS = 4


class BlockingPool:
    """``workers`` threads named ``name``_N, running blocking calls for async callers."""

    def __init__(self, workers: int, name: str) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._running: set[threading.Event] = set()
        self._lock = threading.Lock()
        self._queued = 0

    @property
    def queued(self) -> int:
        """Calls submitted that no thread has started yet (they wait for a free one)."""
        return self._queued

    def _submit(self, fn: Callable[[], T]) -> Future[T]:
        """``fn`` on the executor, counted in :attr:`queued` until a thread starts it."""
        def started() -> T:
            with self._lock:
                self._queued -= 1
            return fn()

        with self._lock:
            self._queued += 1
        future = self._executor.submit(started)
        future.add_done_callback(self._dropped)
        return future

    def _dropped(self, future: Future[Any]) -> None:
        if future.cancelled():  # never started: no thread took it off the count
            with self._lock:
                self._queued -= 1

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a thread. If the caller is cancelled before it starts, it
        never does; once started it runs to its end on its own."""
        return await asyncio.wrap_future(self._submit(partial(fn, *args, **kwargs)))

    async def call_stoppable(self, fn: Callable[[threading.Event], T], wait_on_cancel: bool = False) -> T:
        """``fn(stop)`` on a thread. If the caller is cancelled, ``stop`` is set (a queued call
        never starts, a transfer that polls it ends at its next chunk); with ``wait_on_cancel``
        the cancellation waits for the thread to end, so a caller that then removes files (a
        download's temporary file) does not race it."""
        stop = threading.Event()
        self._running.add(stop)
        future: Future[T] = self._submit(partial(fn, stop))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            stop.set()
            if not future.cancel() and wait_on_cancel:
                await asyncio.wait({asyncio.wrap_future(future)})
            raise
        finally:
            self._running.discard(stop)

    async def run_bounded(self, jobs: Sequence[Callable[[], T]], limit: int) -> list[T]:
        """Run blocking ``jobs``, at most ``limit`` at once; their results in order.

        On the first failure no further job starts and the running ones are waited for (an S3
        part must not land after its upload was aborted), then the failure is raised. If the
        caller is cancelled, running jobs finish on their own in the pool.
        """
        results: list[Any] = [None] * len(jobs)
        running: dict[asyncio.Future[T], int] = {}
        queue = iter(enumerate(jobs))
        error: BaseException | None = None
        try:
            while True:
                while error is None and len(running) < limit and (item := next(queue, None)) is not None:
                    running[asyncio.wrap_future(self._submit(item[1]))] = item[0]
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    if future.exception() is not None:
                        error = error or future.exception()
                    else:
                        results[index] = future.result()
        finally:
            for future in running:  # only after a cancellation: nobody waits for these any more
                future.add_done_callback(lambda f: f.cancelled() or f.exception())
        if error is not None:
            raise error
        return results

    async def close(self, wait: bool = True) -> None:
        """Tell stoppable calls to stop, drop queued calls, and (``wait``) wait for the threads."""
        for stop in list(self._running):
            stop.set()
        if wait:
            await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
        else:
            self._executor.shutdown(wait=False, cancel_futures=True)
