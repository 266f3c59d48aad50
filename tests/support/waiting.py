"""Waiting for a condition, with a deadline: the one place tests wait between attempts.

Why: a fixed sleep is either too short under load or wastes time; these poll until the condition
holds and fail with a clear message when the deadline passes.

Waits on a process take two optional callbacks. ``alive`` returns ``None`` while the process
runs and a sentence once it has exited: the wait then fails at once (waiting longer cannot help)
instead of at its deadline. ``details`` returns what a failure should show (a log tail, pending
alerts), computed only when the wait fails.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")

#: One health request's limit: a server that takes longer is asked again, within the wait's own.
HEALTH_REQUEST_TIMEOUT = 1.0


class ProcessExited(RuntimeError):
    """The process a wait depended on has exited before the condition held."""


def _failure(text: str, details: Callable[[], str] | None) -> str:
    return f"{text}\n{details()}" if details is not None else text


def _exited(
    alive: Callable[[], str | None] | None, details: Callable[[], str] | None, message: str
) -> str | None:
    """The failure message if the watched process has exited, else None."""
    reason = alive() if alive is not None else None
    return None if reason is None else _failure(f"gave up waiting for {message}: {reason}", details)


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    *,
    message: str = "condition",
    alive: Callable[[], str | None] | None = None,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    The wait is bounded by a deadline and always ends as soon as the condition holds, which
    keeps tests both fast and robust (unlike a fixed sleep). Exceptions raised by the predicate
    propagate. Raises ``TimeoutError`` after ``timeout`` seconds and ``ProcessExited`` as soon
    as ``alive`` reports an exit (exceptions support code can catch and retry on).
    """
    deadline = time.monotonic() + timeout
    while True:
        if (exited := _exited(alive, details, message)) is not None:
            raise ProcessExited(exited)
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(_failure(f"timed out after {timeout:.1f}s waiting for {message}", details))
        time.sleep(min(interval, remaining))


async def until(
    condition: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "condition",
    *,
    interval: float = 0.05,
    alive: Callable[[], str | None] | None = None,
    details: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy; return that value.

    The asyncio counterpart of ``wait_until``: the event loop keeps serving while it waits.
    Fails the test (AssertionError) at the deadline, or at once when ``alive`` reports an exit.
    """
    deadline = time.monotonic() + timeout
    while True:
        if (exited := _exited(alive, details, what)) is not None:
            raise AssertionError(exited)
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(f"timed out waiting for {what}", details))
        await asyncio.sleep(interval)


async def wait_healthy(
    url: str,
    timeout: float,
    *,
    alive: Callable[[], str | None] | None = None,
    details: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> None:
    """Until a GET of ``url`` (a component's ``/health``) answers 200; refused connections and
    slow answers are tried again. Fails like ``until``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HEALTH_REQUEST_TIMEOUT)) as session:

        async def healthy() -> bool:
            try:
                async with session.get(url) as resp:
                    return resp.status == 200
            except (TimeoutError, aiohttp.ClientError):
                return False

        await until(healthy, timeout, f"{url} to answer 200", interval=interval, alive=alive, details=details)
