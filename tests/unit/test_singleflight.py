"""kraken.tasks.SingleFlight: one call per key, its outcome shared, and who may cancel it."""
from __future__ import annotations

import asyncio

import pytest

from kraken.tasks import SingleFlight, TaskOwner
from tests.support.waiting import until


class Gated:
    """A call that counts its runs and waits at a gate; returns the run count."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.cancelled = 0

    async def __call__(self) -> int:
        self.calls += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.calls


async def test_shares_one_call_and_survives_a_caller_leaving() -> None:
    owner = TaskOwner("test")
    flights: SingleFlight[str, int] = SingleFlight(owner)
    call = Gated()
    waiters = [asyncio.create_task(flights.run("k", call)) for _ in range(5)]
    other = asyncio.create_task(flights.run("other", call))
    # Both calls waiting at the gate; every waiter has joined one of them.
    await until(lambda: call.calls == 2 and len(flights) == 2, what="both calls to start")
    waiters[0].cancel()
    call.gate.set()
    # One call per key; each returns the call count seen once the gate opens.
    assert await asyncio.gather(*waiters[1:]) == [2] * 4
    assert await other == 2 and call.calls == 2
    assert waiters[0].cancelled()
    assert await flights.run("k", call) == 3  # a finished flight is not reused
    await owner.close()


async def test_passes_errors_to_every_caller() -> None:
    owner = TaskOwner("test")
    flights: SingleFlight[str, int] = SingleFlight(owner)

    async def fail() -> int:
        await asyncio.sleep(0)
        raise KeyError("gone")

    results = await asyncio.gather(*(flights.run("k", fail) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, KeyError) for r in results)
    assert "k" not in flights
    await owner.close()


async def test_an_owned_call_outlives_its_callers() -> None:
    owner = TaskOwner("test")
    flights: SingleFlight[str, int] = SingleFlight(owner)
    call = Gated()
    waiter = asyncio.create_task(flights.run("k", call))
    await until(lambda: call.calls == 1, what="the call to start")
    waiter.cancel()
    await asyncio.wait([waiter])
    call.gate.set()
    await until(lambda: "k" not in flights, what="the call to end")
    assert call.calls == 1 and call.cancelled == 0  # it ran to its end with nobody waiting
    await owner.close()


async def test_the_owner_closing_cancels_an_owned_call() -> None:
    owner = TaskOwner("test")
    flights: SingleFlight[str, int] = SingleFlight(owner)
    call = Gated()
    waiter = asyncio.create_task(flights.run("k", call))
    await until(lambda: call.calls == 1, what="the call to start")
    await owner.close()
    assert call.cancelled == 1 and "k" not in flights
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_an_unowned_call_survives_one_of_its_callers_leaving() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    call = Gated()
    first, second = (asyncio.create_task(flights.run("k", call)) for _ in range(2))
    await until(lambda: call.calls == 1, what="the call to start")
    first.cancel()
    await asyncio.wait([first])
    call.gate.set()
    assert await second == 1 and call.cancelled == 0


async def test_an_unowned_call_ends_when_its_last_caller_leaves() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    call = Gated()
    only = asyncio.create_task(flights.run("k", call))
    await until(lambda: call.calls == 1, what="the call to start")
    only.cancel()
    await until(lambda: call.cancelled == 1 and "k" not in flights, what="the call to be cancelled")
    assert call.calls == 1


async def test_a_call_cancelled_before_it_ran_leaves_nothing_behind() -> None:
    owner = TaskOwner("test")
    flights: SingleFlight[str, int] = SingleFlight(owner, "job")
    call = Gated()
    flights.start("k", call)
    await owner.close()  # the flight's task never ran: its coroutine's cleanup never ran either
    assert call.calls == 0 and "k" not in flights and len(flights) == 0
    call.gate.set()
    assert await flights.run("k", call) == 1


async def test_start_runs_without_a_caller_and_a_failure_nobody_awaited_goes_to_the_owner() -> None:
    owner = TaskOwner("test")
    flights: SingleFlight[str, int] = SingleFlight(owner, "job")
    call = Gated()
    assert flights.start("k", call) is True
    assert flights.start("k", call) is False  # under way already
    assert len(flights) == 1
    call.gate.set()
    await until(lambda: len(flights) == 0, what="the call to end")
    assert call.calls == 1

    async def fail() -> int:
        raise RuntimeError("nobody waits")

    flights.start("f", fail)
    task = next(t for t in owner._tasks if t.get_name() == "test:job:f")
    await asyncio.wait([task])
    assert isinstance(task.exception(), RuntimeError)  # raised by the task: the owner logs it
    await owner.close()


async def test_a_failure_someone_waited_for_is_theirs_only() -> None:
    owner = TaskOwner("test")
    flights: SingleFlight[str, int] = SingleFlight(owner, "job")

    async def fail() -> int:
        await asyncio.sleep(0)
        raise RuntimeError("handled by the caller")

    with pytest.raises(RuntimeError):
        await flights.run("k", fail)
    await owner.close()


async def test_a_caller_arriving_as_an_unowned_call_is_cancelled_gets_a_new_call() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    call = Gated()
    leaving = asyncio.create_task(flights.run("k", call))
    await until(lambda: call.calls == 1, what="the call to start")
    leaving.cancel()
    # Runs right after ``leaving`` cancelled the call, before the call's task has ended: it
    # must start a new call, not join the one being cancelled.
    arriving = asyncio.create_task(flights.run("k", call))
    await asyncio.wait([leaving])
    await until(lambda: call.calls == 2, what="a second call to start")
    call.gate.set()
    assert await arriving == 2
    assert call.cancelled == 1


async def test_a_failure_nobody_awaited_can_be_left_to_the_call_to_report() -> None:
    owner = TaskOwner("test")
    flights: SingleFlight[str, int] = SingleFlight(owner, "job", report_orphans=False)

    async def fail() -> int:
        raise RuntimeError("logged by the call itself")

    flights.start("f", fail)
    task = next(t for t in owner._tasks if t.get_name() == "test:job:f")
    await asyncio.wait([task])
    assert task.exception() is None and "f" not in flights
    await owner.close()
