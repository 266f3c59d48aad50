"""A stand-in for the ``time`` module of code that measures periods with ``time.monotonic``:
a test moves it by hand, so periods of seconds or minutes pass at once and exactly."""
from __future__ import annotations

import types

import pytest


class Clock:
    """``monotonic`` returns ``now``, which moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def patch_clock(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> Clock:
    """Replace ``module.time`` with a :class:`Clock` (undone with the monkeypatch)."""
    clock = Clock()
    monkeypatch.setattr(module, "time", clock)
    return clock
