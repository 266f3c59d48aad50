"""BuildIndexClient with several build-indexes (in-process fake servers): a connection failure
or a 503 moves a request to the next address, a 4xx is the answer, the next request goes to the
one that answered, and a DNS name gives every address it resolves to."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kraken.buildindex.client import BuildIndexClient, TagReferenceError
from kraken.buildindex.hosts import BuildIndexHosts, BuildIndexHostsConfig
from kraken.config import ConfigError
from kraken.core.digest import Digest
from kraken.devcluster import free_port
from kraken.http.client import HttpClient, HTTPStatusError, create_client
from kraken.http.config import HttpClientConfig
from kraken.metrics import Metrics

DIGEST = Digest.of_bytes(b"manifest")

Fake = Callable[[int], Awaitable[tuple[str, list[str]]]]


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = create_client(HttpClientConfig(retries=1, backoff=0.01, connect_timeout=1))
    yield client
    await client.close()


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    """``fake(status)``: a build-index answering every tag request with ``status``; returns its
    address and the list of paths it was asked."""
    servers: list[TestServer] = []

    async def start(status: int) -> tuple[str, list[str]]:
        seen: list[str] = []

        async def handle(request: web.Request) -> web.Response:
            seen.append(request.path)
            if status == 400:
                return web.json_response({"error": "bad manifest", "missing": []}, status=400)
            return web.Response(status=status, text=str(DIGEST))

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"127.0.0.1:{server.port}", seen

    yield start
    for server in servers:
        await server.close()


async def test_connection_failure_and_503_move_to_the_next(http: HttpClient, fake: Fake) -> None:
    dead = f"127.0.0.1:{free_port()}"
    busy, busy_seen = await fake(503)
    good, good_seen = await fake(200)
    metrics = Metrics("test")
    failovers = metrics.counter("kraken_build_index_failovers_total", "failovers")
    client = BuildIndexClient([dead, busy, good], http, failovers)
    client._preferred = dead  # deterministic start (a client starts at a random address)

    assert await client.get_tag("a/b:c") == DIGEST
    assert failovers._value.get() == 2
    assert len(busy_seen) == 1 and len(good_seen) == 1

    assert await client.get_tag("a/b:d") == DIGEST  # straight to the one that answered
    assert len(good_seen) == 2 and len(busy_seen) == 1 and failovers._value.get() == 2


async def test_a_4xx_is_the_answer(http: HttpClient, fake: Fake) -> None:
    refusing, refusing_seen = await fake(400)
    good, good_seen = await fake(200)
    client = BuildIndexClient([refusing, good], http)
    client._preferred = refusing
    with pytest.raises(TagReferenceError):
        await client.put_tag("a/b:c", DIGEST)
    missing, _ = await fake(404)
    client = BuildIndexClient([missing, good], http)
    client._preferred = missing
    assert await client.get_tag("a/b:c") is None
    assert len(refusing_seen) == 1 and good_seen == []


async def test_all_down_raises_after_the_retries(http: HttpClient) -> None:
    client = BuildIndexClient([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], http)
    with pytest.raises(OSError):
        await client.get_tag("a/b:c")
    with pytest.raises(ConnectionError):
        await client.ping()


async def test_one_address_keeps_retrying_a_503(http: HttpClient, fake: Fake) -> None:
    busy, seen = await fake(503)
    with pytest.raises(HTTPStatusError):
        await BuildIndexClient(busy, http).get_tag("a/b:c")
    assert len(seen) == 2  # retries=1: as the plain HTTP client retried before


async def test_dns_name_gives_every_address(http: HttpClient, fake: Fake) -> None:
    good, seen = await fake(200)
    port = int(good.rpartition(":")[2])
    hosts = BuildIndexHosts(BuildIndexHostsConfig(dns=f"localhost:{port}", dns_ttl=0.01))
    assert "127.0.0.1:" + str(port) in await hosts.current()
    client = BuildIndexClient(BuildIndexHostsConfig(dns=f"localhost:{port}"), http)
    assert await client.get_tag("a/b:c") == DIGEST


def test_config_checks() -> None:
    assert BuildIndexHostsConfig().static() == ["localhost:15004"]
    assert BuildIndexHostsConfig(addrs=["a:1", "b:2", "a:1"]).static() == ["a:1", "b:2"]
    for bad in [dict(addrs=["a:1"], dns="b:2"), dict(addrs=["nope"]), dict(dns="x:1", dns_ttl=0)]:
        with pytest.raises(ConfigError):
            BuildIndexHostsConfig(**bad)  # type: ignore[arg-type]
