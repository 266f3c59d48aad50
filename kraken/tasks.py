"""Ownership of background tasks, and single flights: concurrent callers of one key share one call.

Every task a component starts belongs to a :class:`TaskOwner`, which cancels it on shutdown.
A :class:`SingleFlight` runs at most one call per key at a time (one origin request per
digest, one download, one hash of a file) and hands its outcome to every caller waiting.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kraken.log import get_logger

log = get_logger("kraken.tasks")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TaskOwner:
    """Holds background tasks; logs tasks that die with an exception; cancels the rest on close."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        _report(task)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", task=task.get_name(), exc_info=task.exception())


@dataclass
class _Flight(Generic[V]):
    outcome: asyncio.Future[V]
    task: asyncio.Task | None = None
    waiters: int = 0


class SingleFlight(Generic[K, V]):
    """At most one call per key at a time; callers asking meanwhile share its outcome.

    The call runs in a task of its own, never inside a caller, so a caller that goes away
    (a client disconnecting) cancels only its own wait. Who else may end the call:

    - with an ``owner``, the call belongs to the component: it runs to its end even when
      every caller left (a download others will ask for again), and the owner's close
      cancels it;
    - without one, the call belongs to its callers: it is cancelled once the last of them
      left (nothing else would ever cancel it).

    A failure goes to the callers waiting; one that no caller waited for is raised by the
    task, so the owner logs it like any background task's failure, unless ``report_orphans``
    is False (calls that log their own failures). A finished flight is forgotten: the next
    caller starts a new call.
    """

    def __init__(self, owner: TaskOwner | None = None, name: str = "flight", *, report_orphans: bool = True) -> None:
        self._owner = owner
        self._name = name
        self._report_orphans = report_orphans
        self._flights: dict[K, _Flight[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    def start(self, key: K, call: Callable[[], Coroutine[Any, Any, V]]) -> bool:
        """Start ``call`` unless a call for ``key`` is under way; True if this one started."""
        if key in self._flights:
            return False
        outcome: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        outcome.add_done_callback(_consume)
        flight = _Flight(outcome)
        self._flights[key] = flight
        coro = self._fly(key, flight, call)
        name = f"{self._name}:{key}"
        if self._owner is not None:
            flight.task = self._owner.spawn(coro, name)
        else:
            flight.task = asyncio.get_running_loop().create_task(coro, name=name)
            flight.task.add_done_callback(_report)
        # Also for a task cancelled before it ran (its coroutine's cleanup never runs then).
        flight.task.add_done_callback(lambda _: self._land(key, flight))
        return True

    async def run(self, key: K, call: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """The outcome of the call for ``key``, joining the one under way or starting ``call``."""
        self.start(key, call)
        flight = self._flights[key]
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.outcome)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and self._owner is None and not flight.outcome.done() and flight.task is not None:
                # Forgotten first: a caller arriving before the task has ended starts a new
                # call instead of joining one that is being cancelled.
                self._land(key, flight)
                flight.task.cancel()

    async def _fly(self, key: K, flight: _Flight[V], call: Callable[[], Coroutine[Any, Any, V]]) -> None:
        try:
            result = await call()
        except asyncio.CancelledError:
            flight.outcome.cancel()
            raise
        except Exception as e:
            flight.outcome.set_exception(e)
            if flight.waiters == 0 and self._report_orphans:
                raise
        else:
            flight.outcome.set_result(result)
        finally:
            self._land(key, flight)

    def _land(self, key: K, flight: _Flight[V]) -> None:
        """Forget the finished flight (the next caller starts a new call)."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.outcome.done():
            flight.outcome.cancel()


def _consume(outcome: asyncio.Future) -> None:
    """Mark a flight's failure as seen, even when no caller waited for it (the task reports it)."""
    if not outcome.cancelled():
        outcome.exception()
