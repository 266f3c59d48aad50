"""Concurrent callers asking for the same key share one call (e.g. one origin request per digest)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from kraken.tasks import TaskOwner

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """The call runs as a task of ``owner``, not inside the first caller: a caller that goes
    away (a client disconnecting) cancels only its own wait, never the call the others share,
    and shutdown cancels calls still running."""

    def __init__(self, owner: TaskOwner) -> None:
        self._owner = owner
        self._flights: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, call: Callable[[], Coroutine[Any, Any, V]]) -> V:
        task = self._flights.get(key)
        if task is None:
            task = self._owner.spawn(call(), f"flight:{key}")
            self._flights[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]

