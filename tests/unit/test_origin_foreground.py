"""The origin's background work waits for a lull in client transfers, never longer than
``max_wait`` (kraken.origin.foreground)."""
from __future__ import annotations

import asyncio
import time

import pytest

from kraken.origin.foreground import ForegroundConfig, ForegroundGate


async def test_an_idle_origin_starts_background_work_at_once() -> None:
    gate = ForegroundGate(ForegroundConfig(quiet=5.0, max_wait=30.0))
    started = time.monotonic()
    await asyncio.wait_for(gate.lull(), 1.0)
    assert time.monotonic() - started < 0.5


async def test_background_work_waits_for_the_transfer_and_the_quiet_period_after_it() -> None:
    gate = ForegroundGate(ForegroundConfig(quiet=0.2, max_wait=30.0))
    with gate.transfer():
        waiter = asyncio.ensure_future(gate.lull())
        await asyncio.sleep(0.4)  # a transfer lasting 0.4 s, not synchronisation
        assert not waiter.done()
    ended = time.monotonic()
    await asyncio.wait_for(waiter, 5.0)
    assert time.monotonic() - ended >= 0.2 - 0.01


async def test_a_busy_origin_still_starts_background_work_after_max_wait() -> None:
    gate = ForegroundGate(ForegroundConfig(quiet=0.1, max_wait=0.3))
    with gate.transfer():
        started = time.monotonic()
        await asyncio.wait_for(gate.lull(), 5.0)
        assert 0.3 - 0.01 <= time.monotonic() - started < 2.0


def test_negative_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="background"):
        ForegroundConfig(quiet=-1.0)
