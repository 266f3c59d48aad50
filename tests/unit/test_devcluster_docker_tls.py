"""The Docker mode's ``--tls`` (kraken/devcluster/docker.py), without a daemon: what the
containers are given (the supervisor's ``--tls-dir``, the files mounted read-only, the group
that may read the keys) and which names the certificates carry. The real thing, with dockerd,
is tests/realclients/test_devcluster_docker.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509

from kraken.devcluster import docker as dockermode
from kraken.devcluster.__main__ import choose_mode
from kraken.devcluster.params import AgentPorts, HerdPorts
from kraken.devcluster.tls import DevPki

AGENTS = {"agent-one": AgentPorts(16000, 16001, 16002), "agent-two": AgentPorts(17000, 17001, 17002)}


def _sans(path: Path) -> set[str]:
    ext = x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)}


def test_tls_no_longer_forces_native_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRAKEN_DEVCLUSTER", "docker")
    assert choose_mode()[0] == "docker"


def test_each_supervisor_gets_the_mounted_directory_and_plain_http_probes(tmp_path: Path) -> None:
    containers = dockermode.plan(HerdPorts(), AGENTS, "all", "host", "127.0.0.1", [], "", tls=DevPki(tmp_path))
    for c in containers:
        assert c.args[-2:] == ["--tls-dir", "/etc/kraken/tls"], c.args
        # The proxy and the agents' servers stay plain HTTP, as in the native mode.
        assert c.probe.startswith("http://") and c.tls is None, c.probe
    plain = dockermode.plan(HerdPorts(), AGENTS, "all", "host", "127.0.0.1", [], "")
    assert all("--tls-dir" not in c.args and not c.mounts for c in plain)


def test_bridge_certificates_name_the_containers_and_the_ca_key_stays_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    pki = DevPki(tmp_path / "tls")
    containers = dockermode.plan(HerdPorts(), AGENTS, "all", "bridge", "127.0.0.1", [], "", tls=pki)
    dockermode._mount_tls(containers, pki, ["localhost", "127.0.0.1"])

    names = _sans(tmp_path / "tls" / "tracker.pem")
    assert {"localhost", "127.0.0.1", "kraken-herd", "kraken-agent-one", "172.30.77.10", "172.30.77.12"} <= names
    gid = dockermode.IMAGE_GID if os.geteuid() == 0 else os.getegid()
    for c in containers:
        assert c.groups == [gid]
        mounted = {target.name for target in c.mounts.values()}
        assert {"ca.pem", "client.pem", "client-key.pem", "origin-key.pem", "agent.pem"} <= mounted
        assert "ca-key.pem" not in mounted
        cmd = c.run_command("bridge")
        assert f"{tmp_path.resolve() / 'tls' / 'ca.pem'}:/etc/kraken/tls/ca.pem:ro" in cmd
        assert cmd[cmd.index("--group-add") + 1] == str(gid)
    key = (tmp_path / "tls" / "client-key.pem").stat()
    assert key.st_mode & 0o777 == 0o640 and key.st_gid == gid
    assert (tmp_path / "tls" / "ca-key.pem").stat().st_mode & 0o077 == 0

    # A second start reuses them all.
    capsys.readouterr()
    dockermode._mount_tls(containers, pki, ["localhost", "127.0.0.1"])
    assert "certificates reused" in capsys.readouterr().out
