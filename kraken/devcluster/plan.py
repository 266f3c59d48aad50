"""The devcluster's topology: which processes run, on which ports, with which configs.

Each component runs as ``python -m kraken <component> --config <file> --port <port>``. Its
config is a small overlay that ``extends:`` the component's checked-in YAML and overrides what
differs (data directories, peers' addresses), so the checked-in configs stay the single
description of each component. Nothing here starts anything (see ``supervise``).
"""
from __future__ import annotations

import copy
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kraken.devcluster.params import CONFIG_ROOT, AgentPorts, HerdPorts
from kraken.devcluster.supervise import Process


def write_overlay(path: Path, extends: Path, overrides: dict[str, Any]) -> Path:
    """Write a config file that extends ``extends`` (absolute) and overrides some keys."""
    import yaml  # here, not at the top: ``stop`` must work without the project's dependencies

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"extends": str(extends.resolve()), **overrides}, sort_keys=False))
    return path


def herd_processes(
    workdir: Path, ports: HerdPorts, config_name: str = "development", max_replica: int = 1,
    overrides: dict[str, dict[str, Any]] | None = None, host: str = "127.0.0.1",
    config_dir: Path = CONFIG_ROOT, redis: bool = False, overlay_dir: Path | None = None,
) -> list[Process]:
    """The herd (testfs, the origins, tracker, build-index, proxy) wired to each other at
    ``host``: the address they advertise, and the one agents on other hosts reach them at.

    Every origin is on one ring (each blob owned by ``max_replica`` of them) and the proxy,
    build-index and tracker route over that ring. The origins are named ``origin``,
    ``origin-2``, ..., each with its store in ``workdir/<name>`` and its own P2P port, which
    the tracker's ``origin_p2p`` maps. Origins and build-index keep the backends of the chosen
    config (:func:`herd_backends`): only testfs entries are pointed at the herd's testfs, at
    127.0.0.1 (nothing but the herd itself reads or writes it). ``overrides`` (by
    component) is merged into each process's overlay, e.g. shorter intervals for a test.
    ``redis`` runs a redis-server on ``ports.redis`` (local to the herd) as the tracker's peer
    store, as the seed's herd does; always with several trackers (``tracker``, ``tracker-2``,
    ...), which must share their peers. The overlays go to ``overlay_dir`` (default
    ``workdir/config``; a scratch directory while a start checks them).
    """
    from kraken.config import deep_merge  # here, not at the top: ``stop`` must work without PyYAML

    workdir = Path(workdir)
    cfg = overlay_dir or workdir / "config"
    redis = redis or len(ports.trackers) > 1  # several trackers share one peer store
    origin_addrs = [f"{host}:{port}" for port in ports.origins]
    ring = {"hosts": origin_addrs, "max_replica": max_replica}
    extra = overrides or {}

    def chosen(component: str) -> Path:
        return config_dir / component / f"{config_name}.yaml"

    def backends(component: str) -> dict[str, Any]:
        # testfs is local to the herd and listens on loopback only (see native.plan).
        return herd_backends(chosen(component), f"127.0.0.1:{ports.testfs}")

    def overlay(name: str, component: str, settings: dict[str, Any]) -> Path:
        return write_overlay(cfg / f"{name}.yaml", chosen(component), deep_merge(settings, extra.get(component, {})))

    def proc(name: str, component: str, port: int, settings: dict[str, Any],
             other_ports: tuple[int, ...] = ()) -> Process:
        return Process(name, component, port, overlay(name, component, settings), workdir / "logs" / f"{name}.log",
                       other_ports=list(other_ports))

    origins: list[Process] = []
    for i, (port, p2p_port, addr) in enumerate(zip(ports.origins, ports.origins_p2p, origin_addrs, strict=True)):
        name = "origin" if i == 0 else f"origin-{i + 1}"
        origins.append(proc(name, "origin", port, {
            "store": {"root": str(workdir / name)}, "advertise": addr, "ring": ring,
            **backends("origin"),
            "p2p": {"listen": {"port": p2p_port}},
        }, (p2p_port,)))
    tracker_store = {"store": "redis", "redis": {"addr": f"127.0.0.1:{ports.redis}"}} if redis else {}
    trackers = [proc("tracker" if i == 0 else f"tracker-{i + 1}", "tracker", port, {
        "origins": ring,
        "origin_p2p": {addr: f"{host}:{p2p}" for addr, p2p in zip(origin_addrs, ports.origins_p2p, strict=True)},
        **tracker_store,
    }) for i, port in enumerate(ports.trackers)]
    return [
        *([redis_process(workdir, ports.redis)] if redis else []),
        proc("testfs", "testfs", ports.testfs, {"root": str(workdir / "testfs")}),
        *origins,
        *trackers,
        proc("build-index", "build-index", ports.build_index, {
            "store": {"root": str(workdir / "build-index")}, "origins": ring,
            **backends("build-index"),
        }),
        proc("proxy", "proxy", ports.proxy, {
            "store": {"root": str(workdir / "proxy")}, "origins": ring,
            "build_index": {"addr": f"{host}:{ports.build_index}"},
        }),
    ]


def tracker_section(host: str, ports: HerdPorts) -> dict[str, Any]:
    """An agent's ``tracker:``: the herd's tracker, or every one of them (failover)."""
    addrs = [f"{host}:{port}" for port in ports.trackers]
    return {"addr": addrs[0]} if len(addrs) == 1 else {"addrs": addrs}


def herd_backends(config: Path, testfs_addr: str) -> dict[str, Any]:
    """The overlay's ``backends`` for a component whose chosen config is ``config``: that
    config's own entries (s3, gcs, file, ... and their bandwidth and must_ready), with every
    testfs entry pointed at the herd's testfs at ``testfs_addr``; nothing (``{}``) when it has
    no testfs entry, so the chosen config's backends apply as they are.

    A config that cannot be read is left to the plan's config check, which names the problem
    (``kraken.devcluster.configcheck``).
    """
    from kraken.config import ConfigError, read_yaml_chain  # here: ``stop`` must work without PyYAML

    try:
        entries = read_yaml_chain(config).get("backends")
    except ConfigError:
        return {}
    if not isinstance(entries, list):
        return {}
    entries = copy.deepcopy(entries)
    rewritten = False
    for entry in entries:
        backend = entry.get("backend") if isinstance(entry, dict) else None
        testfs = backend.get("testfs") if isinstance(backend, dict) else None
        if isinstance(testfs, dict):
            testfs["addr"] = testfs_addr
            rewritten = True
    return {"backends": entries} if rewritten else {}


#: The redis-server's directory under the work dir (made by the start that runs it).
REDIS_DIR = "redis"


def redis_process(workdir: Path, port: int) -> Process:
    """A redis-server for the tracker, on loopback only, keeping nothing on disk: peers
    re-announce every few seconds, so a restarted store refills itself."""
    data = Path(workdir) / REDIS_DIR
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(data), "--daemonize", "no"]
    return Process("redis", "redis", port, None, Path(workdir) / "logs" / "redis.log", argv=argv)


def agent_processes(
    workdir: Path, ports: HerdPorts, agents: dict[str, AgentPorts], config_name: str = "development",
    overrides: dict[str, Any] | None = None, herd_host: str = "127.0.0.1", peer_ip: str = "",
    config_dir: Path = CONFIG_ROOT, overlay_dir: Path | None = None, herd: dict[str, Any] | None = None,
) -> list[Process]:
    """Agents (one per entry of ``agents``, by name) pulling from the herd at ``herd_host``, ``ports``.

    Each has its store in ``workdir/<name>`` and talks to the herd's tracker and build-index.
    The ports are given as the agent's flags (``--port``, ``--server-port``, ``--peer-port``)
    rather than in the overlay, so its log shows them; its ``/health`` is on the server port.
    ``overrides`` is merged into every agent's overlay, written to ``overlay_dir`` (default
    ``workdir/config``). ``herd`` replaces the ``tracker``, ``build_index`` and ``origins``
    sections (a herd on several hosts: ``multiherd.agent_sections``).
    """
    from kraken.config import deep_merge  # here, not at the top: ``stop`` must work without PyYAML

    workdir = Path(workdir)
    procs = []
    overlays = overlay_dir or workdir / "config"
    for name, agent in agents.items():
        config = write_overlay(overlays / f"{name}.yaml", config_dir / "agent" / f"{config_name}.yaml",
                               deep_merge({
                                   "store": {"root": str(workdir / name)},
                                   **(herd or {
                                       "tracker": tracker_section(herd_host, ports),
                                       "build_index": {"addr": f"{herd_host}:{ports.build_index}"},
                                       "origins": {"hosts": [f"{herd_host}:{port}" for port in ports.origins]},
                                   }),
                               }, overrides or {}))
        procs.append(Process(
            name, "agent", agent.registry, config, workdir / "logs" / f"{name}.log",
            extra_args=["--server-port", str(agent.server), "--peer-port", str(agent.p2p),
                        *(["--peer-ip", peer_ip] if peer_ip else [])],
            other_ports=[agent.p2p, agent.server], health_port=agent.server,
        ))
    return procs


#: What each of a process's ports is (``Process.ports`` order), for messages.
_PORT_ROLES = {"agent": ("registry", "P2P", "server"), "origin": ("", "P2P")}


def port_owners(procs: Iterable[Process]) -> list[tuple[str, int]]:
    """(who, port) for every port of ``procs``: ``agent-one (P2P)``, ``proxy``."""
    owners = []
    for proc in procs:
        roles = _PORT_ROLES.get(proc.component, ())
        for i, port in enumerate(proc.ports):
            owners.append((f"{proc.name} ({roles[i]})" if i < len(roles) and roles[i] else proc.name, port))
    return owners


def shared_ports(owners: Iterable[tuple[str, int]]) -> list[str]:
    """One line per port that two of ``owners`` (who, port) would both listen on: the second
    would die with "address already in use" after the first started."""
    first: dict[int, str] = {}
    problems = []
    for who, port in owners:
        if port in first:
            problems.append(f"port {port} is given to both {first[port]} and {who}")
        else:
            first[port] = who
    return problems
