"""Waiting for a condition, with a deadline: the one place tests wait between attempts.

Why: a fixed sleep is either too short under load or wastes time; these poll until the condition
holds and fail with a clear message when the deadline passes.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    *,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    This is the only place that waits between attempts: the wait is bounded by
    a deadline and always ends as soon as the condition holds, which keeps
    tests both fast and robust (unlike a fixed sleep).  Exceptions raised by the
    predicate propagate.  Raises ``TimeoutError`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(min(interval, remaining))




async def until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy; return that value.

    The asyncio counterpart of ``wait_until``: the event loop keeps serving while it waits.
    Fails (AssertionError) at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
