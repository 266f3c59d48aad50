"""The agent's Docker preload against a fake Docker Engine API on a unix socket."""
import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from kraken.agent.preload import PreloadConfig, Preloader, PreloadError
from tests.support.waiting import until

DockerHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def docker(tmp_path: Path) -> AsyncIterator[Callable[[DockerHandler], Awaitable[str]]]:
    """Start a fake daemon answering ``POST /images/create`` with ``handler``; gives its socket."""
    runners: list[web.AppRunner] = []

    async def start(handler: DockerHandler) -> str:
        app = web.Application()
        app.router.add_post("/images/create", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        path = str(tmp_path / f"docker{len(runners)}.sock")
        await web.UnixSite(runner, path).start()
        return path

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_docker_pull_streams_progress_to_the_end(docker) -> None:
    asked = []

    async def pull(request: web.Request) -> web.StreamResponse:
        asked.append(dict(request.query))
        resp = web.StreamResponse()
        await resp.prepare(request)
        for status in ("Pulling", "Downloading", "Done"):
            await resp.write(json.dumps({"status": status}).encode() + b"\n")
        return resp

    socket = await docker(pull)
    preloader = Preloader(PreloadConfig(docker_socket=socket), "localhost:16000")
    assert await preloader.pull("team/app:v1", "docker") == "localhost:16000/team/app:v1"
    assert asked == [{"fromImage": "localhost:16000/team/app", "tag": "v1"}]


async def test_docker_pull_is_bounded_by_preload_timeout(docker) -> None:
    """No limit of aiohttp's own cuts a long pull short: ``preload.timeout`` bounds it."""
    done = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await done.wait()
        return resp

    socket = await docker(stall)
    preloader = Preloader(PreloadConfig(docker_socket=socket, timeout=0.3), "localhost:16000")
    try:
        with pytest.raises(PreloadError) as err:
            await preloader.pull("team/app:v1", "docker")
    finally:
        done.set()
    assert err.value.status == 504 and "within 0.3s" in str(err.value)


async def test_docker_error_line_fails_the_pull(docker) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(text=json.dumps({"error": "manifest unknown"}) + "\n")

    socket = await docker(refuse)
    with pytest.raises(PreloadError, match="docker: manifest unknown") as err:
        await Preloader(PreloadConfig(docker_socket=socket), "localhost:16000").pull("team/app:v1", "docker")
    assert err.value.status == 502


async def test_preloads_beyond_the_running_and_queued_limit_get_429_at_once(docker) -> None:
    """``max_concurrent`` pulls run, ``max_queued`` wait; the next one is refused before it starts."""
    release = asyncio.Event()
    running = 0
    most = 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal running, most
        running += 1
        most = max(most, running)
        resp = web.StreamResponse()
        await resp.prepare(request)
        await release.wait()
        running -= 1
        return resp

    socket = await docker(slow)
    preloader = Preloader(PreloadConfig(docker_socket=socket, max_concurrent=2, max_queued=1), "localhost:16000")
    admitted = [asyncio.create_task(preloader.pull(f"team/app:v{i}", "docker")) for i in range(3)]
    await until(lambda: running == 2, what="two pulls to reach the Docker API")
    with pytest.raises(PreloadError) as err:
        await preloader.pull("team/app:v9", "docker")
    assert err.value.status == 429
    release.set()
    assert len(await asyncio.gather(*admitted)) == 3
    assert most == 2
    assert await preloader.pull("team/app:v10", "docker") == "localhost:16000/team/app:v10"  # room again
