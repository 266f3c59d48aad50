"""The host list shared by the tracker and build-index clients (kraken.http.hostlist): config
rules, lazy DNS re-resolution, and the down-period bookkeeping, without any client on top."""
from __future__ import annotations

import asyncio
import ipaddress

import pytest

from kraken.http import hostlist as hostlist_module
from kraken.http.addresses import IPAddress
from kraken.http.hostlist import DOWN_MIN, HostList, HostListConfig
from tests.support.clock import Clock, patch_clock
from tests.support.waiting import until


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """kraken.http.hostlist's time (down periods, DNS ttl) moves only when the test moves it."""
    return patch_clock(monkeypatch, hostlist_module)


def test_config_precedence_and_the_one_conflict() -> None:
    assert HostListConfig(addr="a:1", addrs=["b:2", "b:2"]).static() == ["b:2"]
    assert HostListConfig(addr="a:1", dns="n:3").static() == []
    assert HostListConfig(addr="a:1", dns="n:3").describe() == "dns:n:3"
    assert not HostListConfig().configured() and HostListConfig().describe() == "-"
    with pytest.raises(ValueError, match="not both"):
        HostListConfig(addrs=["b:2"], dns="n:3")


async def test_dns_is_looked_up_on_use_once_per_ttl_one_lookup_at_a_time(clock: Clock) -> None:
    asked: list[str] = []
    answers: list[list[IPAddress] | None] = [[ipaddress.ip_address("10.0.0.2")], None]
    slow_lookup = asyncio.Event()

    async def resolver(host: str, timeout: float) -> list[IPAddress] | None:
        asked.append(host)
        await slow_lookup.wait()
        return answers.pop(0) if answers else [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")]

    hosts = HostList(HostListConfig(dns="idx.example:80", dns_ttl=5), "test", resolver)
    assert hosts.addrs == ("idx.example:80",)  # the name itself until it first resolves
    refreshes = [asyncio.create_task(hosts.refresh()) for _ in range(3)]
    await until(lambda: asked == ["idx.example"], 10, "the first lookup under way")
    slow_lookup.set()
    assert await asyncio.gather(*refreshes) == [True, False, False]
    assert asked == ["idx.example"] and hosts.addrs == ("10.0.0.2:80",)
    clock.now += 5
    assert not await hosts.refresh() and hosts.addrs == ("10.0.0.2:80",)  # failed: the last answer kept
    clock.now += 4
    assert not await hosts.refresh() and len(asked) == 2
    clock.now += 1
    assert await hosts.refresh() and sorted(hosts.addrs) == ["10.0.0.1:80", "[::1]:80"]


def test_down_periods_double_and_end_when_the_host_answers(clock: Clock) -> None:
    hosts = HostList(HostListConfig(addrs=["a:1", "b:1"]), "test", hostname="host-a")
    first, second = hosts.order()
    assert hosts.failed(first) == DOWN_MIN and hosts.failed(first) is None  # together: one failure
    assert hosts.order() == [second, first] and hosts.is_down(first)
    clock.now += DOWN_MIN
    assert hosts.order() == [first, second] and hosts.failed(first) == 2 * DOWN_MIN
    assert hosts.answered(first) and not hosts.answered(first)
    assert hosts.order() == [first, second] and hosts.failed(first) == DOWN_MIN
