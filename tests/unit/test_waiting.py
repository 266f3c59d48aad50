"""The waiting helpers (tests/support/waiting.py): a watched process that exits ends a wait at
once, a failure carries its details, and ``wait_healthy`` waits through refusals and non-200s."""
from __future__ import annotations

import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kraken.devcluster import free_port
from tests.support.waiting import ProcessExited, until, wait_healthy, wait_until


def test_wait_until_stops_at_once_when_the_process_exits() -> None:
    start = time.monotonic()
    with pytest.raises(ProcessExited, match=r"(?s)gave up waiting for ready: server exited \(code 1\)\nlog tail"):
        wait_until(lambda: False, timeout=30, message="ready", alive=lambda: "server exited (code 1)",
                   details=lambda: "log tail")
    assert time.monotonic() - start < 5


def test_wait_until_timeout_carries_the_details() -> None:
    with pytest.raises(TimeoutError, match=r"(?s)waiting for ready\nlog tail"):
        wait_until(lambda: False, timeout=0.1, interval=0.02, message="ready", alive=lambda: None,
                   details=lambda: "log tail")


async def test_until_fails_at_once_when_the_process_exits() -> None:
    start = time.monotonic()
    with pytest.raises(AssertionError, match="gave up waiting for ready: exited"):
        await until(lambda: False, timeout=30, what="ready", alive=lambda: "exited")
    assert time.monotonic() - start < 5


async def test_until_returns_the_value_and_fails_with_details() -> None:
    calls: list[int] = []

    async def third() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert await until(third, timeout=5, interval=0.01) == 3
    with pytest.raises(AssertionError, match="timed out waiting for never\nalerts: none"):
        await until(lambda: False, timeout=0.1, what="never", interval=0.02, details=lambda: "alerts: none")


async def test_wait_healthy_waits_for_a_200() -> None:
    answers = [503, 503, 200]

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=answers.pop(0) if len(answers) > 1 else answers[0])

    app = web.Application()
    app.router.add_get("/health", health)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        await wait_healthy(str(server.make_url("/health")), 10, interval=0.01)
        assert answers == [200]
    finally:
        await server.close()


async def test_wait_healthy_gives_up_when_the_process_exits_or_at_the_deadline() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"  # nothing listens there
    with pytest.raises(AssertionError, match="exited with 2\nthe log"):
        await wait_healthy(url, 30, alive=lambda: "exited with 2", details=lambda: "the log")
    with pytest.raises(AssertionError, match="timed out waiting for .*/health to answer 200"):
        await wait_healthy(url, 0.2, interval=0.02)
