"""Network namespaces as stand-in hosts for multi-host tests.

Why: a multi-host Kraken deployment (one herd host, many agent hosts, each pulling from its own
agent on ``localhost:16000``) can only be exercised honestly if every "host" has its own
loopback and its own address, and the hosts really talk over a network that can be slowed
down or cut. Network namespaces joined by a bridge give exactly that on one machine.

Every name this module creates starts with the caller's prefix (``kmh-`` in the multi-host
test), so nothing collides with other tests, and ``Network.destroy`` removes all of it (tc
qdiscs, namespaces, veths, the bridge) even after a partial ``create``; ``create`` first
removes what a run killed before its teardown left under the same prefix.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NetnsHost", "Network", "ip", "netns_available", "NETNS_DIR"]

NETNS_DIR = Path("/run/netns")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; a failure raises with ip's stderr (which names the problem)."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_available() -> str | None:
    """Why namespaces cannot be used here (a reason to skip), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for binary in ("ip", "tc", "nsenter"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (iproute2 / util-linux)"
    return None


@dataclass
class NetnsHost:
    """One "host": a namespace with ``eth0`` at ``address`` on the bridge, and ``lo`` up."""

    name: str
    address: str
    #: The veth end left in the host namespace, enslaved to the bridge.
    host_veth: str
    iface: str = "eth0"

    @property
    def netns_path(self) -> str:
        """For ``nsenter --net=...`` (what dockerd needs; ``ip netns exec`` hides cgroups)."""
        return str(NETNS_DIR / self.name)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def link(self, up: bool) -> None:
        """Plug this host's cable in or pull it out (the host loss of a failure test)."""
        ip("-n", self.name, "link", "set", self.iface, "up" if up else "down")

    def limit_egress(self, rate: str, burst: str = "64kb", latency: str = "50ms") -> None:
        """Cap what this host sends (tbf; netem does not exist on this kernel)."""
        subprocess.run(
            self.exec_argv(["tc", "qdisc", "replace", "dev", self.iface, "root", "tbf",
                            "rate", rate, "burst", burst, "latency", latency]),
            check=True, capture_output=True, timeout=30,
        )

    def clear_egress_limit(self) -> None:
        """Remove the tbf qdisc (absent qdisc or namespace: nothing to do)."""
        subprocess.run(self.exec_argv(["tc", "qdisc", "del", "dev", self.iface, "root"]),
                       capture_output=True, check=False, timeout=30)


@dataclass
class Network:
    """A bridge ``<prefix>br0`` on ``<subnet>.0/24`` and the namespaces plugged into it.

    The host namespace sits on the bridge at ``<subnet>.254`` so the test process itself
    can reach every host (to push images and to read metrics).
    """

    prefix: str
    subnet: str  # the first three octets, e.g. "10.201.0"
    hosts: dict[str, NetnsHost] = field(default_factory=dict)
    #: The FORWARD rule that lets bridged traffic through, if one was needed (see create()).
    forward_rule: list[str] | None = None

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br0"

    @property
    def cidr(self) -> str:
        return f"{self.subnet}.0/24"

    def create(self) -> None:
        """The bridge, with the host namespace's address on it, up."""
        self._remove_leftovers()
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        self._allow_bridged_traffic()

    def _remove_leftovers(self) -> None:
        """A run killed before ``destroy`` (a CI timeout, an interrupted session) leaves its
        namespaces, the processes in them, its veths and its bridge. Every name with this
        prefix is this test's own, so they go before anything is made again."""
        stale = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
        for name in (n for n in stale if n.startswith(self.prefix)):
            for pid in ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", name, check=False)
        for line in ip("-o", "link", "show", check=False).stdout.splitlines():
            fields = line.split(":")
            link = fields[1].strip().split("@")[0] if len(fields) > 1 else ""
            if link.startswith(self.prefix):
                ip("link", "del", link, check=False)

    def _allow_bridged_traffic(self) -> None:
        """Accept traffic between the bridge's ports even under a FORWARD DROP policy.

        With br_netfilter loaded (a Docker daemon in the host namespace loads it, and may set
        the FORWARD policy to DROP), frames crossing our bridge go through the host's iptables
        FORWARD chain. One rule scoped to this bridge keeps the hosts connected whatever the
        rest of the machine does; destroy() removes it.
        """
        knob = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        if shutil.which("iptables") is None or not knob.exists() or knob.read_text().strip() != "1":
            return
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        subprocess.run(["iptables", "-w", "-I", *rule], check=True, capture_output=True, timeout=30)
        self.forward_rule = rule

    def add_host(self, short: str, octet: int) -> NetnsHost:
        """Namespace ``<prefix><short>`` at ``<subnet>.<octet>`` on the bridge, ``lo`` up."""
        name = f"{self.prefix}{short}"
        host = NetnsHost(name, f"{self.subnet}.{octet}", f"{self.prefix}v{octet}")
        # Registered first, so destroy() cleans up a half-made host too.
        self.hosts[short] = host
        ip("netns", "add", name)
        ip("link", "add", host.host_veth, "type", "veth", "peer", "name", host.iface, "netns", name)
        ip("link", "set", host.host_veth, "master", self.bridge, "up")
        ip("-n", name, "addr", "add", f"{host.address}/24", "dev", host.iface)
        ip("-n", name, "link", "set", host.iface, "up")
        ip("-n", name, "link", "set", "lo", "up")
        return host

    def destroy(self) -> list[str]:
        """Delete everything this network made; returns what could not be deleted (for a report)."""
        problems = []
        for host in self.hosts.values():
            host.clear_egress_limit()
            if (NETNS_DIR / host.name).exists():
                r = ip("netns", "del", host.name, check=False)
                if r.returncode != 0:
                    problems.append(f"netns {host.name}: {r.stderr.strip()}")
            # Deleting the namespace destroys the veth pair; a namespace that failed half-way
            # may have left the host end.
            if ip("link", "show", host.host_veth, check=False).returncode == 0:
                ip("link", "del", host.host_veth, check=False)
        if ip("link", "show", self.bridge, check=False).returncode == 0:
            r = ip("link", "del", self.bridge, check=False)
            if r.returncode != 0:
                problems.append(f"bridge {self.bridge}: {r.stderr.strip()}")
        self.hosts.clear()
        if self.forward_rule is not None:
            r = subprocess.run(["iptables", "-w", "-D", *self.forward_rule], capture_output=True, text=True,
                               check=False, timeout=30)
            if r.returncode != 0:
                problems.append(f"iptables -D {' '.join(self.forward_rule)}: {r.stderr.strip()}")
            self.forward_rule = None
        return problems
