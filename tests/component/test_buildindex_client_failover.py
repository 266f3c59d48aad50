"""BuildIndexClient with several build-indexes (in-process fake servers): a connection failure
or a 503 moves a request to the next address, a 4xx is the answer, the next requests skip the
ones that failed, and a DNS name gives every address it resolves to."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import Counter

from kraken.buildindex.client import BuildIndexClient, TagReferenceError
from kraken.buildindex.hosts import BuildIndexHostsConfig
from kraken.config import ConfigError, build
from kraken.core.digest import Digest
from kraken.devcluster import free_port
from kraken.http.client import HttpClient, HTTPStatusError, create_client
from kraken.http.config import HttpClientConfig
from kraken.http.hostlist import HostList, host_offset
from kraken.metrics import Metrics
from kraken.proxy.config import ProxyConfig

DIGEST = Digest.of_bytes(b"manifest")
HOSTNAME = "host-a"

Fake = Callable[[int], Awaitable[tuple[str, list[str]]]]


def client_trying(addrs: list[str], http: HttpClient, failovers: Counter | None = None) -> BuildIndexClient:
    """A client whose (fixed) host tries ``addrs`` in this order."""
    at = host_offset(len(addrs), HOSTNAME)
    listed = addrs[len(addrs) - at:] + addrs[:len(addrs) - at]
    client = BuildIndexClient(listed, http, failovers, hostname=HOSTNAME)
    assert client.hosts.order() == addrs
    return client


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
    client = client_trying([dead, busy, good], http, failovers)

    assert await client.get_tag("a/b:c") == DIGEST
    assert failovers._value.get() == 2
    assert len(busy_seen) == 1 and len(good_seen) == 1

    assert await client.get_tag("a/b:d") == DIGEST  # straight to the one that answered
    assert len(good_seen) == 2 and len(busy_seen) == 1 and failovers._value.get() == 2
    assert client.hosts.order() == [good, dead, busy]  # the failed ones last, for a while


async def test_a_4xx_is_the_answer(http: HttpClient, fake: Fake) -> None:
    refusing, refusing_seen = await fake(400)
    good, good_seen = await fake(200)
    client = client_trying([refusing, good], http)
    with pytest.raises(TagReferenceError):
        await client.put_tag("a/b:c", DIGEST)
    missing, _ = await fake(404)
    client = client_trying([missing, good], http)
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
    hosts = HostList(BuildIndexHostsConfig(dns=f"localhost:{port}", dns_ttl=0.01), "build-index")
    assert hosts.addrs == (f"localhost:{port}",)  # the name itself until it first resolves
    assert await hosts.refresh() and f"127.0.0.1:{port}" in hosts.addrs
    client = BuildIndexClient(BuildIndexHostsConfig(dns=f"localhost:{port}"), http)
    assert await client.get_tag("a/b:c") == DIGEST


def test_config_checks() -> None:
    assert BuildIndexHostsConfig().static() == ["localhost:15004"]
    assert BuildIndexHostsConfig(addrs=["a:1", "b:2", "a:1"]).static() == ["a:1", "b:2"]
    for bad in [dict(addrs=["a:1"], dns="b:2"), dict(addrs=["nope"]), dict(dns="x:1", dns_ttl=0), dict(addr="")]:
        with pytest.raises(ValueError):
            BuildIndexHostsConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="build_index"):
        build(ProxyConfig, {"store": {"root": "/x"}, "origins": {"hosts": ["o:1"]},
                            "build_index": {"addrs": ["a:1"], "dns": "b:2"}})
