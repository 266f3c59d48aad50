"""Who is who, read from ``/proc``: a process's command line, whether it lives, which process
listens on a port and whether it runs in a container. Standard library only (``stop``)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

#: A container's cgroup, as a process in it shows from the host: Docker's (cgroupfs
#: ``/docker/<id>``, systemd ``docker-<id>.scope``), podman's, containerd's and Kubernetes'. Not
#: a daemon's own service cgroup (``docker.service``, ``containerd.service``), so dockerd and
#: docker-proxy are host processes.
_CONTAINER_CGROUP = re.compile(
    r"/docker/[0-9a-f]{12,}|docker-[0-9a-f]{12,}\.scope|libpod-[0-9a-f]{12,}\.scope"
    r"|cri-containerd-[0-9a-f]{12,}\.scope|/containerd/|/kubepods")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2: stat.rfind(b")") + 3] not in (b"Z", b"X")


def container_cgroup(cgroup: str, ours: str = "") -> bool:
    """``cgroup`` (a ``/proc/<pid>/cgroup``) is a container's, and not the one we run in (when
    the devcluster itself runs in a container, its neighbours there are not "in a container")."""
    return cgroup != ours and _CONTAINER_CGROUP.search(cgroup) is not None


def in_container(pid: int) -> bool:
    """``pid`` runs in a container (its cgroup is a container's). Another mount namespace
    alone says nothing: systemd's PrivateTmp services and snaps have one too."""
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        ours = Path("/proc/self/cgroup").read_text()
    except OSError:
        return False
    return container_cgroup(cgroup, ours)


@dataclass(frozen=True)
class Holder:
    """The process that listens on a port: what a "port in use" message tells about it."""

    pid: int
    cmdline: str
    container: bool = False


def port_holder(port: int) -> Holder | None:
    """The process listening on TCP ``port``, if this user can see it."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; column 9 is the inode.
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                    pid = int(entry)
                    return Holder(pid, cmdline(pid), in_container(pid))
            except OSError:
                continue
    return None
