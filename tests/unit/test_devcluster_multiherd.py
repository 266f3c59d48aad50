"""A herd on several hosts (``--herd-hosts``): which host runs what, and who is told about whom."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kraken.config import load_config
from kraken.devcluster.multiherd import HerdLayout, agent_sections, host_list, host_processes
from kraken.devcluster.params import EXAMPLES_ROOT, HerdPorts
from kraken.proxy.config import ProxyConfig

HOSTS = ["10.9.0.1", "10.9.0.2", "10.9.0.3"]
MULTIHOST = EXAMPLES_ROOT / "multihost" / "config"


def layout() -> HerdLayout:
    return HerdLayout(HOSTS, trackers=HOSTS[:2], build_indexes=HOSTS[:2])


def plan(tmp_path: Path, host: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (listen address, overlay) of what ``host`` runs."""
    procs = host_processes(tmp_path / host, HerdPorts(), layout(), host, config_name="multihost",
                           config_dir=MULTIHOST)
    return {p.name: (p.host, yaml.safe_load(p.config.read_text()) if p.config else {}) for p in procs}


def test_host_list_takes_commas_and_spaces() -> None:
    assert host_list("a, b  c,") == ["a", "b", "c"]
    assert host_list("") == []


def test_each_host_runs_an_origin_and_a_proxy_and_only_its_roles(tmp_path: Path) -> None:
    assert list(plan(tmp_path, HOSTS[0])) == ["redis", "testfs", "origin", "tracker", "build-index", "proxy"]
    assert list(plan(tmp_path, HOSTS[1])) == ["origin", "tracker", "build-index", "proxy"]
    third = plan(tmp_path, HOSTS[2])
    assert list(third) == ["origin", "proxy"]
    assert {addr for addr, _ in third.values()} == {HOSTS[2]}  # every component on its host's address


def test_components_are_wired_to_every_peer(tmp_path: Path) -> None:
    second = plan(tmp_path, HOSTS[1])
    ring = {"hosts": [f"{h}:15002" for h in HOSTS], "max_replica": 2}
    origin = second["origin"][1]
    assert origin["ring"] == ring and origin["advertise"] == f"{HOSTS[1]}:15002"
    assert origin["backends"][0]["backend"]["testfs"]["addr"] == f"{HOSTS[0]}:14000"
    tracker = second["tracker"][1]
    assert tracker["store"] == "redis" and tracker["redis"]["addr"] == f"{HOSTS[0]}:14001"
    assert tracker["origin_p2p"][f"{HOSTS[2]}:15002"] == f"{HOSTS[2]}:15001"
    assert second["build-index"][1]["backends"][0]["backend"]["testfs"]["addr"] == f"{HOSTS[0]}:14000"
    proxy = second["proxy"][1]
    assert proxy["build_index"] == {"addrs": [f"{h}:15004" for h in HOSTS[:2]]}
    procs = host_processes(tmp_path / "p", HerdPorts(), layout(), HOSTS[1], config_name="multihost",
                           config_dir=MULTIHOST)
    proxy_config = next(p.config for p in procs if p.name == "proxy")
    assert proxy_config is not None
    assert load_config(ProxyConfig, proxy_config).origins.max_replica == 2


def test_agents_get_every_tracker_build_index_and_origin() -> None:
    sections = agent_sections(layout(), HerdPorts())
    assert sections["tracker"] == {"addrs": [f"{h}:15003" for h in HOSTS[:2]]}
    assert sections["build_index"] == {"addrs": [f"{h}:15004" for h in HOSTS[:2]]}
    assert sections["origins"] == {"hosts": [f"{h}:15002" for h in HOSTS]}


def test_roles_default_to_every_host_and_strays_are_refused() -> None:
    everywhere = HerdLayout(HOSTS)
    assert everywhere.trackers == HOSTS and everywhere.build_indexes == HOSTS and everywhere.shared == HOSTS[0]
    assert everywhere.problem() is None
    problem = HerdLayout(HOSTS, trackers=["10.9.0.9"]).problem()
    assert problem is not None and "10.9.0.9" in problem
