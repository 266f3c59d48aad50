"""What ``make devcluster`` says when its ports are taken, and who counts as "in a container":
the message logic alone, with made-up holders (no processes, no Docker)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kraken.devcluster import checks
from kraken.devcluster.advice import BusyPort, busy_ports_message
from kraken.devcluster.procfs import Holder, container_cgroup

WORKDIR = Path("/tmp/kraken-devcluster")
KRAKEN_CONTAINERS = ["kraken-agent-one", "kraken-herd"]
HERD_IN_CONTAINER = Holder(4242, "/opt/kraken/bin/python -m kraken origin --config /var/cache/kraken/herd/config/"
                                 "origin.yaml --port 15002", container=True)
DOCKER_PROXY = Holder(900, "/usr/bin/docker-proxy -proto tcp -host-ip 127.0.0.1 -host-port 15000 "
                           "-container-ip 172.30.77.10 -container-port 15000")


def test_ports_held_by_the_docker_devcluster_name_make_docker_stop() -> None:
    busy = [BusyPort("origin", 15002, HERD_IN_CONTAINER), BusyPort("proxy", 15000, HERD_IN_CONTAINER)]
    msg = busy_ports_message(busy, WORKDIR, KRAKEN_CONTAINERS)
    assert msg.startswith("devcluster: ports 15002 (origin), 15000 (proxy) are already in use by pid 4242 ("), msg
    assert "the Docker devcluster holds 15002, 15000 (containers kraken-agent-one, kraken-herd): " \
           "stop it with `make docker_stop`" in msg, msg
    # Not the paths inside the containers, not their PIDs.
    assert "devcluster-stop" not in msg and "/var/cache/kraken/herd" not in msg.split("To free")[1], msg
    assert "kill" not in msg, msg


def test_unseen_holders_while_the_docker_devcluster_runs_are_it() -> None:
    # A non-root user cannot read the fds of the containers' processes (uid 10001): no holder.
    busy = [BusyPort("origin", 15002, None), BusyPort("proxy", 15000, None)]
    msg = busy_ports_message(busy, WORKDIR, KRAKEN_CONTAINERS)
    assert "the Docker devcluster holds 15002, 15000 (containers kraken-agent-one, kraken-herd): " \
           "stop it with `make docker_stop`" in msg, msg
    assert "devcluster-stop" not in msg and "ss -ltnp" not in msg and "kill" not in msg, msg


def test_busy_ports_asks_for_the_containers_even_when_no_holder_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "port_free", lambda port: port != 15000)
    monkeypatch.setattr(checks, "port_holder", lambda port: None)
    asked: list[bool] = []

    def containers() -> list[str]:
        asked.append(True)
        return KRAKEN_CONTAINERS

    msg = checks.busy_ports([("proxy", 15000), ("origin", 15002)], WORKDIR, containers)
    assert asked and msg is not None, msg
    assert "port 15000 (proxy) is already in use by another process" in msg, msg
    assert "the Docker devcluster holds 15000" in msg and "`make docker_stop`" in msg, msg
    assert checks.busy_ports([("origin", 15002)], WORKDIR, containers) is None


def test_docker_proxy_is_the_docker_devcluster_when_it_runs() -> None:
    msg = busy_ports_message([BusyPort("proxy", 15000, DOCKER_PROXY)], WORKDIR, KRAKEN_CONTAINERS)
    assert "the Docker devcluster holds 15000" in msg and "`make docker_stop`" in msg, msg
    assert "kill" not in msg, msg
    msg = busy_ports_message([BusyPort("proxy", 15000, DOCKER_PROXY)], WORKDIR, [])
    assert "a container holds 15000: find it with `docker ps`" in msg and "kill" not in msg, msg


def test_ports_held_by_a_native_devcluster_name_its_work_dir() -> None:
    holder = Holder(77, f"{sys.executable} -m kraken proxy --config /srv/dc/config/proxy.yaml --port 15000")
    msg = busy_ports_message([BusyPort("proxy", 15000, holder)], WORKDIR, KRAKEN_CONTAINERS)
    assert "a native devcluster (work dir /srv/dc) holds 15000: stop it with `make devcluster-stop " \
           "DEVCLUSTER_DIR=/srv/dc`" in msg, msg
    assert "docker_stop" not in msg and "kill" not in msg, msg


def test_a_port_held_by_an_unknown_process() -> None:
    msg = busy_ports_message([BusyPort("tracker", 15003, None)], WORKDIR)
    assert "port 15003 (tracker) is already in use by another process" in msg
    assert "`make devcluster-stop`" in msg and "ss -ltnp 'sport = :15003'" in msg, msg
    assert "docker_stop" not in msg, msg


def test_a_container_that_is_not_the_devcluster() -> None:
    msg = busy_ports_message([BusyPort("proxy", 15000, HERD_IN_CONTAINER)], WORKDIR, [])
    assert "a container holds 15000: find it with `docker ps`" in msg and "docker_stop" not in msg, msg


CID = "3f" * 32


def test_container_cgroups() -> None:
    for cgroup in (f"12:pids:/docker/{CID}\n", f"0::/system.slice/docker-{CID}.scope\n",
                   f"0::/machine.slice/libpod-{CID}.scope\n", "0::/kubepods/besteffort/pod1/abc\n",
                   f"0::/system.slice/cri-containerd-{CID}.scope\n"):
        assert container_cgroup(cgroup), cgroup
    # Host services: dockerd and docker-proxy (docker.service), containerd itself, a PrivateTmp
    # service or a snap (another mount namespace, a host cgroup), a login shell.
    for cgroup in ("0::/system.slice/docker.service\n", "0::/system.slice/containerd.service\n",
                   "0::/system.slice/systemd-resolved.service\n", "0::/snap.firefox.firefox-1234.scope\n",
                   "0::/user.slice/user-1000.slice/session-2.scope\n", "12:pids:/\n"):
        assert not container_cgroup(cgroup), cgroup
    # Our own container's neighbours are not "in a container" to us.
    assert not container_cgroup(f"12:pids:/docker/{CID}\n", ours=f"12:pids:/docker/{CID}\n")
