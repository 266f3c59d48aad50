import socket
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kraken.devcluster import free_port
from kraken.http.app import create_app
from kraken.http.client import ERROR_BODY_LIMIT, HTTPStatusError, create_client
from kraken.http.config import HttpClientConfig
from kraken.http.health import PROBE_ERRORS, check


class Teapot(Exception):
    def to_response(self) -> web.Response:
        return web.json_response({"errors": [{"code": "TEAPOT"}]}, status=418)


async def boom(_):
    raise RuntimeError("kaboom")


async def teapot(_):
    raise Teapot()


async def item(request):
    return web.Response(text=request.match_info["name"])


@pytest.fixture
async def server():
    async def not_ready():
        raise ConnectionError("tracker down")

    app = create_app("unit", readiness=not_ready)
    app.router.add_get("/boom", boom)
    app.router.add_get("/teapot", teapot)
    app.router.add_get("/items/{name}", item)
    srv = TestServer(app)
    await srv.start_server()
    yield srv
    await srv.close()


async def test_health_metrics_and_errors(server):
    async with aiohttp.ClientSession() as s:
        async with s.get(server.make_url("/health")) as r:
            assert r.status == 200
        async with s.get(server.make_url("/readiness")) as r:
            assert r.status == 503 and "tracker down" in await r.text()
        async with s.get(server.make_url("/boom")) as r:
            assert r.status == 500
            body = await r.json()
            assert "kaboom" in body["error"] and "Traceback" not in body["error"]
        async with s.get(server.make_url("/teapot")) as r:
            assert r.status == 418 and (await r.json())["errors"][0]["code"] == "TEAPOT"
        for name in ("a", "b"):
            async with s.get(server.make_url(f"/items/{name}")) as r:
                assert await r.text() == name
        async with s.get(server.make_url("/metrics")) as r:
            text = await r.text()
    assert 'kraken_http_requests_total{method="GET",route="/items/{name}",status="200"} 2.0' in text
    assert 'kraken_http_requests_total{method="GET",route="/boom",status="500"} 1.0' in text
    assert 'kraken_http_request_duration_seconds_count{method="GET",route="/teapot"} 1.0' in text


async def test_client_retries_transient_statuses_then_succeeds():
    calls = []

    async def flaky(request):
        calls.append(await request.read())
        return web.Response(status=503 if len(calls) < 3 else 200, text=str(len(calls)))

    app = web.Application()
    app.router.add_put("/x", flaky)
    async with TestServer(app) as srv:
        client = create_client(HttpClientConfig(retries=3, backoff=0.01))
        try:
            resp = await client.request("PUT", str(srv.make_url("/x")), data=b"payload")
            assert await resp.text() == "3"
            resp.release()
        finally:
            await client.close()
    assert calls == [b"payload"] * 3


async def test_client_does_not_retry_client_errors_or_streams():
    calls = []

    async def handler(request):
        calls.append(await request.read())
        return web.Response(status=503 if request.path == "/stream" else 404, text="nope")

    app = web.Application()
    app.router.add_route("*", "/{p}", handler)

    async def body():
        yield b"chunk"

    async with TestServer(app) as srv:
        client = create_client(HttpClientConfig(retries=3, backoff=0.01))
        try:
            with pytest.raises(HTTPStatusError) as err:
                await client.request("GET", str(srv.make_url("/missing")))
            assert err.value.status == 404
            with pytest.raises(HTTPStatusError) as err:
                await client.request("POST", str(srv.make_url("/stream")), data=body())
            assert err.value.status == 503
        finally:
            await client.close()
    assert len(calls) == 2


async def test_an_error_keeps_only_the_start_of_a_huge_body() -> None:
    """A server answering an error with 8 MiB (an upstream registry, a backend) costs the
    caller ERROR_BODY_LIMIT bytes, not the whole body; error JSON stays readable."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/json":
            return web.json_response({"error": "no such tag"}, status=404)
        resp = web.StreamResponse(status=500)
        await resp.prepare(request)
        for _ in range(128):
            await resp.write(b"x" * 65536)
        return resp

    app = web.Application()
    app.router.add_route("*", "/{p}", handler)
    async with TestServer(app) as srv:
        client = create_client(HttpClientConfig(retries=0))
        try:
            with pytest.raises(HTTPStatusError) as err:
                await client.request("GET", str(srv.make_url("/huge")))
            assert err.value.status == 500 and len(err.value.body) == ERROR_BODY_LIMIT
            with pytest.raises(HTTPStatusError) as err:
                await client.request("GET", str(srv.make_url("/json")))
            assert err.value.message == "no such tag"
        finally:
            await client.close()


async def test_client_gives_up_on_refused_connection():
    client = create_client(HttpClientConfig(retries=2, backoff=0.01))
    try:
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.request("GET", f"http://127.0.0.1:{free_port()}/")
    finally:
        await client.close()


@pytest.fixture
def unanswered_addr():
    """``host:port`` of a listener whose accept queue is full: a connection to it neither
    succeeds nor fails (its SYNs are dropped), like a host that has gone away."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))
    yield f"127.0.0.1:{port}"
    queued.close()
    listener.close()


async def test_health_probe_keeps_the_clients_connect_timeout(unanswered_addr):
    """A probe's own bound is on the whole call; an unreachable host still fails within the
    client's connect_timeout, not the probe's (a push waits on this probe)."""
    client = create_client(HttpClientConfig(connect_timeout=0.3))
    try:
        start = time.monotonic()
        with pytest.raises(PROBE_ERRORS):
            await check(client, unanswered_addr, timeout=30)
        assert time.monotonic() - start < 5
    finally:
        await client.close()


async def test_client_builds_the_urls_of_kraken_services_in_its_scheme():
    client = create_client(HttpClientConfig())
    try:
        assert client.url("origin:15002", "/health") == "http://origin:15002/health"
        client.secure = True
        assert client.base("origin:15002") == "https://origin:15002"
        assert client.url("http://testfs:80/", "/files/a") == "http://testfs:80/files/a"
    finally:
        await client.close()
