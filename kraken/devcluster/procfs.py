"""Who is who, read from ``/proc``: a process's command line, whether it lives, which process
listens on a port and whether it runs in a container. Standard library only (``stop``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Words in ``/proc/<pid>/cgroup`` that mark a container's process.
_CONTAINER_CGROUPS = ("docker", "containerd", "libpod", "kubepods")


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


def in_container(pid: int) -> bool:
    """``pid`` runs in a container: its cgroup is a container runtime's, or its mount
    namespace is not ours (a process of the Docker devcluster seen from the host)."""
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    if any(word in cgroup for word in _CONTAINER_CGROUPS):
        return True
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False


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
