"""``python -m kraken.devcluster start --origins 3 --trackers 2``: a herd of three origins
(each blob on two) and two trackers sharing a redis-server, on the ports the parameter files
give plus free ones, and agents configured with both trackers (tests/cluster/test_tracker_failover.py
kills one; here the devcluster would stop as a whole, as it does when any process dies). An
image pushed through the proxy is pulled from both agents.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from kraken.devcluster import http_ok, port_free
from kraken.devcluster.params import FLEET_STEP
from tests.support.devcluster import READY_TIMEOUT, Devcluster, params_with_free_ports
from tests.support.registry_http import fetch_blob, fetch_manifest, push_blob_bytes, push_manifest

REPO = "fleet/app"


def _pids(workdir: Path) -> dict[str, int]:
    state = json.loads((workdir / "devcluster.json").read_text())
    return {name: int(info["pid"]) for name, info in state["processes"].items()}


def _fleet_params(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    """Parameter files on free ports whose derived fleet ports (origin-2/3 and tracker-2, at
    +10 and +20: FLEET_STEP) are free too and clash with none of them."""
    for attempt in range(20):
        (tmp_path / f"try-{attempt}").mkdir()
        params, moved = params_with_free_ports(tmp_path / f"try-{attempt}")
        derived = {moved[base] + FLEET_STEP * i for base in (15002, 15001) for i in (1, 2)}
        derived.add(moved[15003] + FLEET_STEP)
        if not derived & set(moved.values()) and all(port_free(p) for p in derived):
            return params, moved
    raise AssertionError("no free set of fleet ports found in 20 tries")


def test_three_origins_and_two_trackers(tmp_path: Path) -> None:
    params, moved = _fleet_params(tmp_path)
    workdir = tmp_path / "dc"
    dc = Devcluster(workdir, "--herd-params", str(params / "herd_param.sh"), "--origins", "3", "--trackers", "2")
    try:
        dc.wait_for_line("ready:", READY_TIMEOUT)
        pids = _pids(workdir)
        assert {"origin", "origin-2", "origin-3", "tracker", "tracker-2", "redis"} <= set(pids), pids
        origin = yaml.safe_load((workdir / "config" / "origin-3.yaml").read_text())
        assert len(origin["ring"]["hosts"]) == 3 and origin["ring"]["max_replica"] == 2, origin["ring"]
        agent = yaml.safe_load((workdir / "config" / "agent-one.yaml").read_text())
        trackers = agent["tracker"]["addrs"]
        assert len(trackers) == 2 and f"127.0.0.1:{moved[15003]}" in trackers, agent["tracker"]
        for addr in trackers:
            assert http_ok(f"http://{addr}/health"), addr

        proxy = f"http://127.0.0.1:{moved[15000]}"
        config, layer = json.dumps({"os": "linux", "architecture": "amd64"}).encode(), os.urandom(2_000_000)
        cd, ld = push_blob_bytes(proxy, REPO, config), push_blob_bytes(proxy, REPO, layer)
        md = push_manifest(proxy, REPO, "v1", cd, len(config), ld, len(layer))
        one, two = f"localhost:{moved[16000]}", f"localhost:{moved[17000]}"
        assert fetch_manifest(one, REPO, "v1")[1] == str(md)
        assert fetch_blob(one, REPO, str(ld)) == layer
        assert fetch_manifest(two, REPO, "v1")[1] == str(md)
        assert fetch_blob(two, REPO, str(ld)) == layer
    finally:
        dc.cleanup()
