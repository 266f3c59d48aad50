"""kraken.heap: when the heap is trimmed (on growth, then while it settles) and that a real
trim gives freed memory back."""
from __future__ import annotations

import asyncio

import pytest

from kraken import heap
from tests.support.waiting import until

MiB = 1 << 20


class FakeProcess:
    """A resident size that follows ``script`` (one entry per reading of a check; None: no
    change) and a trim that sets it to the next of ``after_trim``."""

    def __init__(self, script: list[int | None], after_trim: list[int]) -> None:
        self.script = script
        self.after_trim = after_trim
        self.size = 0
        self.checks = 0
        self.trims = 0
        self.just_trimmed = False

    def resident(self) -> int:
        if self.just_trimmed:
            self.just_trimmed = False
            return self.size
        if self.script:
            self.size = self.script.pop(0) or self.size
        self.checks += 1
        return self.size

    def trim(self) -> int:
        self.trims += 1
        self.size = self.after_trim.pop(0)
        self.just_trimmed = True
        return 1


async def _run(proc: FakeProcess, checks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "resident_bytes", proc.resident)
    task = asyncio.create_task(heap._trim_on_growth(proc.trim, 0.001, 16 * MiB))
    try:
        await until(lambda: proc.checks >= checks, 10, f"{checks} checks of the resident size", interval=0.001)
    finally:
        task.cancel()


async def test_an_idle_process_is_never_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProcess([100 * MiB, 110 * MiB, 105 * MiB], [])
    await _run(proc, 20, monkeypatch)
    assert proc.trims == 0


async def test_growth_trims_then_trims_follow_until_one_gives_back_little(monkeypatch: pytest.MonkeyPatch) -> None:
    # 60 -> 90 MiB: a trim (to 80); then quiet: trims to 65 and 64.5, which gave back less
    # than SETTLED, so no more.
    proc = FakeProcess([60 * MiB, None, 90 * MiB], [80 * MiB, 65 * MiB, 64 * MiB + MiB // 2])
    await _run(proc, 20, monkeypatch)
    assert proc.trims == 3
    assert proc.size == 64 * MiB + MiB // 2


def test_a_real_trim_returns_freed_memory() -> None:
    trim = heap.tune_glibc()
    if trim is None:
        pytest.skip("no glibc malloc_trim here")
    blocks = [bytearray(64 << 10) for _ in range(1024)]  # 64 MiB in blocks under the mmap threshold
    keep = blocks[-1]
    grown = heap.resident_bytes()
    del blocks
    trim()
    assert heap.resident_bytes() < grown - (32 << 20)
    assert len(keep) == 64 << 10
