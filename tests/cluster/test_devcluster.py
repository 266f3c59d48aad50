"""``make devcluster``: the real ``python -m kraken.devcluster start`` command, end to end.

The command uses the fixed default ports (testfs 14000, proxy 15000, origin 15002, build-index
15004), so every test here skips, saying which port is taken, when one of them is in use
(a developer's own ``make devcluster``, say). Each test stops what it started in ``finally``.
No sleeps: readiness and exits are awaited on events (a line read, a process exit) or polled
against a deadline.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kraken.devcluster import (
    REPO_ROOT,
    AgentPorts,
    HerdPorts,
    Process,
    configcheck,
    http_ok,
    port_free,
    write_overlay,
)
from kraken.devcluster.params import agent_variable, ambiguous_overrides
from tests.support.devcluster import (
    EXIT_TIMEOUT,
    NO_DAEMON,
    READY_TIMEOUT,
    Devcluster,
    devcluster_env,
    params_with_free_ports,
)
from tests.support.ocigen import generate_oci_layout
from tests.support.skopeo import assert_dir_matches_image, skopeo_copy, skopeo_pull_dir
from tests.support.waiting import wait_until

PORTS = {"testfs": HerdPorts.testfs, "proxy": HerdPorts.proxy, "origin": HerdPorts.origin,
         "build-index": HerdPorts.build_index, "tracker": HerdPorts.tracker,
         "agent-one": 16002, "agent-two": 17002}



def _busy_ports() -> list[str]:
    return [f"{port} ({name})" for name, port in PORTS.items() if not port_free(port)]


@pytest.fixture
def default_ports_free() -> None:
    busy = _busy_ports()
    if busy:
        pytest.skip(f"the devcluster's fixed ports are in use: {', '.join(busy)} "
                    f"(a devcluster running? `make devcluster-stop`)")





@pytest.fixture
def devcluster(tmp_path: Path, default_ports_free: None) -> Iterator[Devcluster]:
    dc = Devcluster(tmp_path / "dc")
    try:
        yield dc
    finally:
        dc.cleanup()


def _listening_addresses(ports: set[int]) -> dict[int, set[str]]:
    """Port -> the local addresses (hex, as the kernel shows them: 127.0.0.1 is ``0100007F``)
    TCP sockets listen on, from /proc/net/tcp and /proc/net/tcp6."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and int(port, 16) in ports:  # 0A: LISTEN
                found.setdefault(int(port, 16), set()).add(address)
    return found


def _assert_ports_free() -> None:
    # The supervisor exits only after its children did, so the ports are free by now; the short
    # deadline only absorbs the kernel's closing of the listening sockets.
    wait_until(lambda: not _busy_ports(), 10.0, message="the devcluster's ports to be free")


@pytest.mark.realclients
def test_start_push_pull_and_ctrl_c(devcluster: Devcluster, tmp_path: Path) -> None:
    devcluster.wait_for_line("ready:", READY_TIMEOUT)
    out = devcluster.output
    assert "native processes (no Docker daemon answers" in out, out  # the mode it chose, and why
    assert str(devcluster.workdir / "logs") in out, out  # where the logs are
    for name, port in PORTS.items():  # the endpoint table
        assert any(line.split()[:2] == [name, f"http://127.0.0.1:{port}{'/v2/' if name == 'proxy' else '/health'}"]
                   for line in devcluster.lines), f"no endpoint line for {name}:\n{out}"
    # The whole cluster on one host: nothing listens beyond loopback, P2P included.
    ports = {*PORTS.values(), HerdPorts.origin_p2p, 16000, 16001, 17000, 17001}
    listening = _listening_addresses(ports)
    assert set(listening) == ports and all(a == {"0100007F"} for a in listening.values()), listening

    image = generate_oci_layout(tmp_path / "oci", "v1", [64 * 1024, 3 * 1024], seed=15000)
    ref = f"docker://127.0.0.1:{PORTS['proxy']}/test/dev:1"
    skopeo_copy(image.oci_ref, ref)
    pulled = skopeo_pull_dir(ref, tmp_path / "pulled")
    assert_dir_matches_image(pulled, image)

    logs = {p.stem: p.read_text(errors="replace") for p in (devcluster.workdir / "logs").glob("*.log")}
    assert set(logs) == set(PORTS), sorted(logs)
    assert "/v2/test/dev/manifests/1" in logs["proxy"], logs["proxy"][-3000:]
    assert image.layer_digests[0] in logs["proxy"] or image.layer_digests[0] in logs["origin"]

    devcluster.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert devcluster.wait_exit() == 0, devcluster.output
    assert "devcluster: stopped" in devcluster.output
    _assert_ports_free()
    assert not (devcluster.workdir / "devcluster.json").exists()


def test_stop_from_another_process(devcluster: Devcluster) -> None:
    devcluster.wait_for_line("ready:", READY_TIMEOUT)
    stop = subprocess.run(
        [sys.executable, "-m", "kraken.devcluster", "stop", "--workdir", str(devcluster.workdir)],
        env=devcluster_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT, check=False,
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stopped" in stop.stdout
    assert devcluster.wait_exit() == 0, devcluster.output
    _assert_ports_free()

    again = subprocess.run(
        [sys.executable, "-m", "kraken.devcluster", "stop", "--workdir", str(devcluster.workdir)],
        env=devcluster_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT, check=False,
    )
    assert again.returncode == 0 and "none running" in again.stdout, again.stdout + again.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path, default_ports_free: None) -> None:
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", PORTS["origin"]))
        blocker.listen()
        dc = Devcluster(tmp_path / "dc")
        try:
            code = dc.wait_exit()
            out = dc.output
        finally:
            dc.cleanup()
    assert code == 1, out
    assert f"port {PORTS['origin']} (origin) is already in use by pid {os.getpid()}" in out, out
    # How to free it: stop that process (it is no devcluster), or move the component.
    assert f"kill {os.getpid()}" in out and "examples/devcluster/*_param.sh" in out, out
    assert "devcluster-stop" not in out and "docker_stop" not in out, out
    # Nothing was started: every other port stayed free, and nothing was written.
    assert not _busy_ports(), _busy_ports()
    assert not (tmp_path / "dc").exists()


@pytest.mark.parametrize("mode, message", [
    ("docker", "no Docker daemon answers (DOCKER_HOST=" + NO_DAEMON),
    ("podman", "KRAKEN_DEVCLUSTER='podman' is not a mode: use docker or native"),
])
def test_a_mode_that_cannot_run_is_a_clear_error(tmp_path: Path, mode: str, message: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "kraken.devcluster", "start", "--workdir", str(tmp_path / "dc")],
        env=dict(devcluster_env(), KRAKEN_DEVCLUSTER=mode), cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=EXIT_TIMEOUT, check=False,
    )
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "KRAKEN_DEVCLUSTER=native" in r.stderr or "native" in r.stderr, r.stderr





def test_ports_come_from_the_parameter_files(tmp_path: Path) -> None:
    params, moved = params_with_free_ports(tmp_path)
    assert {16000, 17000, 15000, 15003}.issubset(moved), moved
    dc = Devcluster(tmp_path / "dc", "--herd-params", str(params / "herd_param.sh"))
    try:
        dc.wait_for_line("ready:", READY_TIMEOUT)
        assert f"agent-one pulls on localhost:{moved[16000]}" in dc.output, dc.output
        assert f"agent-two pulls on localhost:{moved[17000]}" in dc.output, dc.output
        for default in (15000, 16000, 17000):  # the registries, on the ports the files now give
            assert http_ok(f"http://127.0.0.1:{moved[default]}/v2/"), (default, moved[default])
        for default in (15003, 16002, 17002):
            assert http_ok(f"http://127.0.0.1:{moved[default]}/health"), (default, moved[default])
    finally:
        dc.cleanup()


def test_a_bad_parameter_file_is_a_clear_error(tmp_path: Path) -> None:
    params, _ = params_with_free_ports(tmp_path)
    agent_two = params / "agent_two_param.sh"
    agent_two.write_text(agent_two.read_text().replace("AGENT_PEER_PORT=", "AGENT_PEER_PORT=x"))
    dc = Devcluster(tmp_path / "dc", "--herd-params", str(params / "herd_param.sh"))
    try:
        assert dc.wait_exit() == 1, dc.output
    finally:
        dc.cleanup()
    expected = rf"devcluster: {re.escape(str(agent_two))}: AGENT_PEER_PORT='x\d+' is not a port"
    assert re.search(expected, dc.output), dc.output
    assert "ready:" not in dc.output and not (tmp_path / "dc").exists(), dc.output


def _start(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m kraken.devcluster start`` that is expected to refuse before starting anything."""
    return subprocess.run(
        [sys.executable, "-m", "kraken.devcluster", "start", "--workdir", str(tmp_path / "dc"), *args],
        env=dict(devcluster_env(), **env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        check=False,
    )


def test_a_generic_agent_port_in_the_environment_is_refused(tmp_path: Path) -> None:
    # Both agents read AGENT_REGISTRY_PORT: applied to both, agent-two would die on agent-one's port.
    r = _start(tmp_path, AGENT_REGISTRY_PORT="18000")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "AGENT_REGISTRY_PORT=18000 in the environment would apply to every agent (agent-one, agent-two)" in r.stderr
    assert "AGENT_ONE_REGISTRY_PORT=18000 or AGENT_TWO_REGISTRY_PORT=18000" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "dc").exists()


def test_each_agent_has_its_own_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    params = REPO_ROOT / "examples" / "devcluster"
    assert agent_variable(params / "agent_two_param.sh", "AGENT_REGISTRY_PORT") == "AGENT_TWO_REGISTRY_PORT"
    monkeypatch.setenv("AGENT_TWO_REGISTRY_PORT", "18000")
    assert AgentPorts.from_params(params / "agent_two_param.sh").registry == 18000
    assert AgentPorts.from_params(params / "agent_one_param.sh").registry == 16000
    # One agent alone (its container, a multi-host agent) takes the generic name.
    monkeypatch.setenv("AGENT_REGISTRY_PORT", "18001")
    assert AgentPorts.from_params(params / "agent_one_param.sh").registry == 18001
    assert ambiguous_overrides([params / "agent_one_param.sh"], os.environ) is None


def test_two_components_on_one_port_are_refused_before_starting(tmp_path: Path) -> None:
    r = _start(tmp_path, AGENT_TWO_REGISTRY_PORT="16000")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "port 16000 is given to both agent-one (registry) and agent-two (registry)" in r.stderr, r.stderr
    r = _start(tmp_path, PROXY_PORT="14000")
    assert "port 14000 is given to both testfs and proxy" in r.stderr, r.stderr
    assert not (tmp_path / "dc").exists()  # checked before anything is created


def test_a_config_error_names_the_users_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", config)
    edited = config / "agent" / "development.yaml"
    edited.write_text(edited.read_text() + "\ndownload:\n  fallback_afterr: 30s\n")
    r = _start(tmp_path, "--config-dir", str(config))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"agent-one: {edited}: download.fallback_afterr: unknown key" in r.stderr, r.stderr
    assert str(tmp_path / "dc" / "config") not in r.stderr, r.stderr  # not the generated overlay
    assert "kraken-devcluster-check-" not in r.stderr, r.stderr  # nor the scratch copy it checked
    assert not (tmp_path / "dc").exists()  # checked before anything is created


@pytest.mark.parametrize("mode, kept", [("native", True), ("docker", False)])
def test_docker_stop_forgets_only_a_docker_devclusters_state(tmp_path: Path, mode: str, kept: bool) -> None:
    # make docker_stop with a native devcluster's work dir: that devcluster's state must stay,
    # or make devcluster-stop could no longer find its supervisor.
    state = tmp_path / "dc" / "devcluster.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"mode": mode, "supervisor": -1, "containers": [], "processes": {}}))
    r = subprocess.run(
        [sys.executable, "-m", "kraken.devcluster", "stop", "--docker", "--workdir", str(state.parent)],
        env=devcluster_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT, check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert state.exists() == kept, r.stdout + r.stderr
    assert ("make devcluster-stop" in r.stdout) == kept, r.stdout


def test_log_tail_shows_only_this_runs_lines(tmp_path: Path) -> None:
    log = tmp_path / "agent-one.log"
    log.write_text("".join(f"earlier run {i}\n" for i in range(50)))
    proc = Process("agent-one", "agent", 16000, None, log, log_offset=log.stat().st_size)
    assert proc.log_tail() == "(nothing logged)"
    with open(log, "a") as f:
        f.write("this run: config error\n")
    assert proc.log_tail() == "this run: config error"


def test_a_config_error_is_traced_to_the_file_that_sets_the_key(tmp_path: Path) -> None:
    user = tmp_path / "config" / "agent" / "development.yaml"
    user.parent.mkdir(parents=True)
    (user.parent / "base.yaml").write_text("registry:\n  tls: no\n")
    user.write_text("extends: base.yaml\ndownload:\n  timeout: soon\n")
    overlay = write_overlay(tmp_path / "dc" / "config" / "agent-one.yaml", user, {"store": {"root": "/x"}})
    assert configcheck.explain(f"{overlay}: download.timeout: not a duration", overlay) == \
        f"{user}: download.timeout: not a duration"
    assert configcheck.explain(f"{overlay}: registry.tls: unknown key", overlay) == \
        f"{user.parent / 'base.yaml'}: registry.tls: unknown key"
    assert configcheck.explain(f"{overlay}: store.root: bad", overlay) == \
        f"{user}: store.root: bad (a value the devcluster itself sets)"
    assert configcheck.explain(f"{overlay}: origins: required key is missing", overlay) == \
        f"{user}: origins: required key is missing"
