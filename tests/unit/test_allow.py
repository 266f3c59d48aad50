"""kraken.http.allow: the allow-list by the connection's address, and its bounded log."""
import ipaddress
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kraken.http import allow
from kraken.http.allow import AllowList, guard, parse_networks
from kraken.http.app import create_app
from kraken.http.errors import JsonError


def test_networks_parse_cidrs_and_single_addresses_and_refuse_typos() -> None:
    nets = parse_networks(["127.0.0.0/8", "::1", "10.1.2.3"])
    assert [str(n) for n in nets] == ["127.0.0.0/8", "::1/128", "10.1.2.3/32"]
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        parse_networks(["10.0.0.0/33"])


def test_membership_by_family() -> None:
    a = AllowList(["127.0.0.0/8", "::1/128"])
    assert a.allows(ipaddress.ip_address("127.0.0.2"))
    assert a.allows(ipaddress.ip_address("::1"))
    assert not a.allows(ipaddress.ip_address("10.0.0.1"))
    assert not a.allows(None)


async def _client(cidrs: list[str]) -> TestClient:
    app = create_app("test")
    guard(app, AllowList(cidrs), lambda addr: JsonError(403, f"{addr} refused"))

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hi")

    app.router.add_get("/hello", hello)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def test_refused_caller_gets_403_but_health_answers() -> None:
    client = await _client(["10.0.0.0/8"])
    try:
        r = await client.get("/hello", headers={"X-Forwarded-For": "10.0.0.1"})  # headers do not count
        assert r.status == 403 and (await r.json()) == {"error": "127.0.0.1 refused"}
        assert (await client.get("/health")).status == 200
    finally:
        await client.close()
    client = await _client(["127.0.0.1"])
    try:
        assert await (await client.get("/hello")).text() == "hi"
    finally:
        await client.close()


def test_refusals_are_logged_once_per_address_and_rate_bounded(caplog, monkeypatch) -> None:
    monkeypatch.setattr(allow, "LOG_BURST", 3)
    a = AllowList(["127.0.0.0/8"])

    class Req:
        method, path, transport = "GET", "/x", None

    with caplog.at_level(logging.WARNING, logger="kraken.http"):
        for _ in range(5):
            a.refused(ipaddress.ip_address("10.0.0.1"), Req())  # type: ignore[arg-type]
        for i in range(2, 10):
            a.refused(ipaddress.ip_address(f"10.0.0.{i}"), Req())  # type: ignore[arg-type]
    assert len([r for r in caplog.records if "request refused" in r.getMessage()]) == 3
