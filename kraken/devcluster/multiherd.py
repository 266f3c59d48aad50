"""A herd spread over several hosts: what one of them runs, wired to the others.

Why: one herd host is a single point of failure. Spread over several, each herd host runs an
origin (all on one ring, each blob on two of them) and a proxy; trackers and build-indexes run
on the hosts named for them; one host (the first unless named) also runs the shared testfs
(the blob and tag backend of every origin and build-index) and the redis-server every tracker
shares. Those two stay single points of failure, as the deployment documents.

Every host uses the herd's standard ports (``herd_param.sh``), so a component's address is
its host's address and its port. Nothing here starts anything: ``native.plan`` calls
:func:`host_processes` for ``--role herd --herd-hosts ...`` and :func:`agent_sections` for the
agents of such a herd.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kraken.devcluster.params import CONFIG_ROOT, HerdPorts
from kraken.devcluster.plan import REDIS_DIR, herd_backends, write_overlay
from kraken.devcluster.supervise import Process


def host_list(text: str) -> list[str]:
    """``"a, b c"`` -> ``["a", "b", "c"]``: commas or spaces, as the parameter files write them."""
    return [h for h in text.replace(",", " ").split() if h]


@dataclass
class HerdLayout:
    """Which herd host runs what. ``trackers`` and ``build_indexes`` default to every herd
    host, ``shared`` (testfs and redis) to the first."""

    hosts: list[str]
    trackers: list[str] = field(default_factory=list)
    build_indexes: list[str] = field(default_factory=list)
    shared: str = ""

    def __post_init__(self) -> None:
        self.trackers = self.trackers or list(self.hosts)
        self.build_indexes = self.build_indexes or list(self.hosts)
        self.shared = self.shared or self.hosts[0]

    def problem(self) -> str | None:
        """Why this layout cannot be deployed (a role on a host that is not in the herd)."""
        for what, hosts in (("tracker", self.trackers), ("build-index", self.build_indexes),
                            ("shared (testfs, redis)", [self.shared])):
            stray = [h for h in hosts if h not in self.hosts]
            if stray:
                return f"{what} host {', '.join(stray)} is not one of the herd hosts ({', '.join(self.hosts)})"
        return None

    def origins(self, ports: HerdPorts) -> list[str]:
        return [f"{h}:{ports.origin}" for h in self.hosts]

    def tracker_addrs(self, ports: HerdPorts) -> list[str]:
        return [f"{h}:{ports.tracker}" for h in self.trackers]

    def build_index_addrs(self, ports: HerdPorts) -> list[str]:
        return [f"{h}:{ports.build_index}" for h in self.build_indexes]

    def ring(self, ports: HerdPorts) -> dict[str, Any]:
        return {"hosts": self.origins(ports), "max_replica": min(2, len(self.hosts))}


def agent_sections(layout: HerdLayout, ports: HerdPorts) -> dict[str, Any]:
    """An agent's overlay for this herd: every tracker, build-index and origin (failover)."""
    return {"tracker": {"addrs": layout.tracker_addrs(ports)},
            "build_index": {"addrs": layout.build_index_addrs(ports)},
            "origins": {"hosts": layout.origins(ports)}}


def host_processes(workdir: Path, ports: HerdPorts, layout: HerdLayout, host: str, *,
                   config_name: str = "development", config_dir: Path = CONFIG_ROOT,
                   overlay_dir: Path | None = None) -> list[Process]:
    """What herd host ``host`` (one of ``layout.hosts``) runs, in start order, each listening on
    ``host`` only: testfs and redis (the shared host), its origin, a tracker and a build-index
    if it is named for them, and a proxy."""
    workdir = Path(workdir)
    cfg = overlay_dir or workdir / "config"
    ring = layout.ring(ports)
    testfs = f"{layout.shared}:{ports.testfs}"

    def proc(name: str, component: str, port: int, settings: dict[str, Any], *other_ports: int) -> Process:
        chosen = config_dir / component / f"{config_name}.yaml"
        process = Process(name, component, port, write_overlay(cfg / f"{name}.yaml", chosen, settings),
                          workdir / "logs" / f"{name}.log", other_ports=list(other_ports))
        process.bind(host)
        return process

    def backends(component: str) -> dict[str, Any]:
        return herd_backends(config_dir / component / f"{config_name}.yaml", testfs)

    procs: list[Process] = []
    if host == layout.shared:
        procs += [shared_redis(workdir, host, ports.redis),
                  proc("testfs", "testfs", ports.testfs, {"root": str(workdir / "testfs")})]
    procs.append(proc("origin", "origin", ports.origin, {
        "store": {"root": str(workdir / "origin")}, "advertise": f"{host}:{ports.origin}", "ring": ring,
        **backends("origin"), "p2p": {"listen": {"port": ports.origin_p2p}},
    }, ports.origin_p2p))
    if host in layout.trackers:
        procs.append(proc("tracker", "tracker", ports.tracker, {
            "origins": ring,
            "origin_p2p": {f"{h}:{ports.origin}": f"{h}:{ports.origin_p2p}" for h in layout.hosts},
            "store": "redis", "redis": {"addr": f"{layout.shared}:{ports.redis}"},
        }))
    if host in layout.build_indexes:
        procs.append(proc("build-index", "build-index", ports.build_index, {
            "store": {"root": str(workdir / "build-index")}, "origins": ring, **backends("build-index"),
        }))
    procs.append(proc("proxy", "proxy", ports.proxy, {
        "store": {"root": str(workdir / "proxy")}, "origins": ring,
        "build_index": {"addrs": layout.build_index_addrs(ports)},
    }))
    return procs


def shared_redis(workdir: Path, host: str, port: int) -> Process:
    """The trackers' redis-server, on loopback (its probe) and ``host`` (the other herd hosts'
    trackers), keeping nothing on disk: peers re-announce every few seconds. It has no
    password: the herd's network must be trusted (protected mode would refuse the others)."""
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", host,
            "--protected-mode", "no", "--save", "", "--appendonly", "no",
            "--dir", str(Path(workdir) / REDIS_DIR), "--daemonize", "no"]
    return Process("redis", "redis", port, None, Path(workdir) / "logs" / "redis.log", argv=argv)
