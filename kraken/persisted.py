"""A durable retry queue in SQLite, and a worker that drains it with exponential backoff.

Used for work that must eventually happen even if the process restarts in between: writing a
pushed blob back to its storage backend, copying a blob to the other ring owners, replicating
a tag. Each task has a unique ``key`` (adding the same key twice keeps one task), a JSON
payload, the number of failed attempts and the time of its next attempt.

SQLite calls run in worker threads (one connection, serialised by a lock) so a slow disk
never stalls the event loop. Commits are durable (WAL, ``synchronous=FULL``): a task the
caller was told is queued survives a crash.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from kraken.log import get_logger
from kraken.tasks import SingleFlight, TaskOwner

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
)
"""


@dataclass(frozen=True)
class Task:
    key: str
    payload: dict[str, Any]
    attempts: int
    next_attempt: float


class PersistedQueue:
    """Tasks stored in one SQLite file; open it with :meth:`open`, then ``close()`` it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> PersistedQueue:
        return await asyncio.to_thread(cls._open_sync, Path(path))

    @classmethod
    def _open_sync(cls, path: Path) -> PersistedQueue:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_SCHEMA)
        return cls(conn)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn(self._conn)

        return await asyncio.to_thread(locked)

    async def close(self) -> None:
        await self._run(lambda conn: conn.close())

    async def add(self, key: str, payload: dict[str, Any], delay: float = 0.0) -> bool:
        """Queue a task due in ``delay`` seconds; returns False if ``key`` is already queued."""
        data = json.dumps(payload, sort_keys=True)
        due = time.time() + delay

        def insert(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO tasks (key, payload, next_attempt) VALUES (?, ?, ?)", (key, data, due)
            )
            return cur.rowcount == 1

        return await self._run(insert)

    async def due(self, now: float | None = None, limit: int = 100) -> list[Task]:
        """Tasks whose next attempt is at or before ``now``, most overdue first."""
        at = time.time() if now is None else now
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT key, payload, attempts, next_attempt FROM tasks WHERE next_attempt <= ?"
                " ORDER BY next_attempt LIMIT ?",
                (at, limit),
            ).fetchall()
        )
        return [_task(row) for row in rows]

    async def all(self) -> list[Task]:
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT key, payload, attempts, next_attempt FROM tasks ORDER BY next_attempt"
            ).fetchall()
        )
        return [_task(row) for row in rows]

    async def get(self, key: str) -> Task | None:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT key, payload, attempts, next_attempt FROM tasks WHERE key = ?", (key,)
            ).fetchone()
        )
        return None if row is None else _task(row)

    async def count(self) -> int:
        return await self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])

    async def next_due_after(self, now: float) -> float | None:
        """The earliest next-attempt time strictly after ``now`` (when to look again)."""
        return await self._run(
            lambda conn: conn.execute(
                "SELECT MIN(next_attempt) FROM tasks WHERE next_attempt > ?", (now,)).fetchone()[0]
        )

    async def done(self, key: str) -> None:
        await self._run(lambda conn: conn.execute("DELETE FROM tasks WHERE key = ?", (key,)))

    async def retry_later(self, key: str, backoff: float, error: str = "") -> None:
        """Count a failed attempt and make the task due again in ``backoff`` seconds."""
        due = time.time() + backoff
        await self._run(
            lambda conn: conn.execute(
                "UPDATE tasks SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE key = ?",
                (due, error[:1000], key),
            )
        )


def _task(row: tuple) -> Task:
    key, payload, attempts, next_attempt = row
    return Task(key=key, payload=json.loads(payload), attempts=attempts, next_attempt=next_attempt)


Handler = Callable[[Task], Awaitable[None]]


class RetryWorker:
    """Runs ``handler`` for due tasks; a task is done when the handler returns, retried when it raises.

    The delay after the n-th failure is ``retry_interval * 2**(n-1)``, capped at
    ``max_retry_interval``. Up to ``concurrency`` tasks run at once, each at most once at a
    time. Add tasks through :meth:`add` so they start without waiting for the next poll;
    ``on_count`` is told the number of queued tasks whenever it may have changed (a gauge).
    """

    def __init__(
        self,
        name: str,
        queue: PersistedQueue,
        handler: Handler,
        retry_interval: float,
        max_retry_interval: float,
        concurrency: int = 4,
        on_count: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.queue = queue
        self._handler = handler
        self._retry_interval = retry_interval
        self._max_retry_interval = max_retry_interval
        self._concurrency = concurrency
        self._on_count = on_count
        self._wake = asyncio.Event()
        self._log = get_logger(f"kraken.persisted.{name}")

    def backoff(self, attempts: int) -> float:
        """Delay before the next try of a task that has now failed ``attempts`` times."""
        return min(self._max_retry_interval, self._retry_interval * 2 ** max(0, attempts - 1))

    def start(self, owner: TaskOwner) -> None:
        owner.spawn(self._loop(SingleFlight(owner, self.name)), f"{self.name}-worker")

    async def add(self, key: str, payload: dict[str, Any], delay: float = 0.0) -> bool:
        """Queue a task (durably) and let the worker see it; False if ``key`` was queued already."""
        added = await self.queue.add(key, payload, delay)
        self._wake.set()
        await self._report_count()
        return added

    async def complete(self, key: str) -> None:
        """The work of task ``key`` was done outside the worker (it must not be running)."""
        await self.queue.done(key)
        await self._report_count()

    async def _report_count(self) -> None:
        if self._on_count is not None:
            self._on_count(await self.queue.count())

    async def _loop(self, attempts: SingleFlight[str, None]) -> None:
        """Start due tasks, each at most once at a time (a single flight per key)."""
        await self._report_count()
        while True:
            self._wake.clear()
            now = time.time()
            for task in await self.queue.due(now, limit=self._concurrency + len(attempts)):
                if len(attempts) >= self._concurrency:
                    break
                attempts.start(task.key, partial(self._attempt, task))
            # Tasks already due but not started wait for a running one to finish (wake);
            # otherwise sleep until the next scheduled attempt.
            next_at = await self.queue.next_due_after(now)
            timeout = None if next_at is None else max(0.0, next_at - time.time())
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _attempt(self, task: Task) -> None:
        try:
            await self._handler(task)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure means "try again later"
            delay = self.backoff(task.attempts + 1)
            error = f"{type(e).__name__}: {e}"
            self._log.warning(
                "task failed, will retry",
                key=task.key, attempt=task.attempts + 1, retry_in=round(delay, 2), error=error,
            )
            await self.queue.retry_later(task.key, delay, error)
        else:
            await self.queue.done(task.key)
            await self._report_count()
        finally:
            self._wake.set()
