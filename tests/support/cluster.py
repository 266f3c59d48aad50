"""Test clusters of real Kraken processes on free ports (built on kraken.devcluster)."""
from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kraken.config import deep_merge
from kraken.core.digest import Digest
from kraken.devcluster import AgentPorts, HerdPorts, Process, StartupError, Supervisor, agent_processes, herd_processes
from kraken.devcluster.net import ProbeTLS
from tests.support.waiting import wait_until


@dataclass
class Herd:
    """testfs, the origins, tracker, build-index, proxy and any agents as real processes,
    wired to each other."""

    supervisor: Supervisor
    workdir: Path
    ports: HerdPorts

    def __getitem__(self, name: str) -> Process:
        return self.supervisor.processes[name]

    @property
    def proxy(self) -> Process:
        return self["proxy"]

    @property
    def origin(self) -> Process:
        """The first origin (the only one unless the herd was started with more)."""
        return self["origin"]

    @property
    def origins(self) -> list[Process]:
        """Every origin, in ring order (``origin``, ``origin-2``, ...)."""
        return [p for p in self.supervisor.processes.values() if p.component == "origin"]

    @property
    def tracker(self) -> Process:
        return self["tracker"]

    @property
    def agents(self) -> list[Process]:
        """Every agent, in start order (``agent-1``, ``agent-2``, ...)."""
        return [p for p in self.supervisor.processes.values() if p.component == "agent"]

    @property
    def build_index(self) -> Process:
        return self["build-index"]

    @property
    def testfs(self) -> Process:
        return self["testfs"]

    def stop(self) -> None:
        self.supervisor.stop_all()

    def registry(self) -> ProxyRegistry:
        return ProxyRegistry(self.proxy)


_ACCESS_RE = re.compile(
    r" request component=\S+ method=(\S+) path=(\S+) status=(\d+) .*?agent=(\"[^\"]*\"|\S+)"
)


@dataclass
class ProxyRegistry:
    """The proxy seen as a registry, with the same helpers tests use on the reference one."""

    process: Process

    @property
    def host(self) -> str:
        return self.process.addr

    @property
    def url(self) -> str:
        return self.process.url

    def access_log(self) -> str:
        """The proxy's access log as ``METHOD path status user-agent`` lines."""
        text = self.process.log_path.read_text(errors="replace")
        return "\n".join(" ".join(m.groups()) for m in _ACCESS_RE.finditer(text))

    def catalog(self) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/v2/_catalog", timeout=30) as resp:
            return list(json.load(resp).get("repositories", []))


def start_herd(
    workdir: Path, origins: int = 1, max_replica: int = 1, attempts: int = 3, agents: int = 0,
    overrides: dict[str, dict[str, Any]] | None = None, probe_tls: dict[str, ProbeTLS] | None = None,
    origins_announce: bool = False,
) -> Herd:
    """A herd on free ports with ``origins`` origins on one ring, ``max_replica`` owners per
    blob, and ``agents`` agents (``agent-1``, ...) pulling from it.

    ``overrides`` (by component, ``agent`` included) is merged into each process's config.
    A port found free can be taken by someone else before the component binds it (the ports
    are chosen up front because every component's config names the others'); such a start is
    retried on fresh ports. ``probe_tls`` (by component) is how to probe the components
    that serve HTTPS. ``origins_announce``: the origins announce what they seed to the herd's
    tracker (``tracker.addr``, which names a port chosen here).
    """
    extra = overrides or {}
    for attempt in range(1, attempts + 1):
        ports = HerdPorts.free(origins)
        agent_ports = {f"agent-{i + 1}": AgentPorts.free() for i in range(agents)}
        sup = Supervisor(workdir / f"attempt-{attempt}" if attempt > 1 else workdir)
        herd_extra = extra
        if origins_announce:
            announce = {"tracker": {"addr": f"127.0.0.1:{ports.tracker}"}}
            herd_extra = {**extra, "origin": deep_merge(extra.get("origin", {}), announce)}
        procs = [*herd_processes(sup.workdir, ports, max_replica=max_replica, overrides=herd_extra),
                 *agent_processes(sup.workdir, ports, agent_ports, overrides=extra.get("agent"))]
        for proc in procs:
            proc.tls = (probe_tls or {}).get(proc.component)
        try:
            for proc in procs:
                sup.start(proc)
        except StartupError as e:
            sup.stop_all()
            if not _port_taken(str(e)) or attempt == attempts:
                raise
            continue
        except BaseException:
            sup.stop_all()
            raise
        return Herd(sup, sup.workdir, ports)
    raise AssertionError("unreachable")


def _port_taken(error: str) -> bool:
    """Whether a start failed on a port taken meanwhile (an HTTP or a P2P listen port)."""
    return "address already in use" in error or "cannot listen on" in error


def wait_metainfo(base: str, repo: str, digest: Digest, timeout: float = 300.0) -> None:
    """Until ``base`` (an origin's /internal) serves the blob's metainfo; the origin then seeds it."""
    url = f"{base}/namespace/{repo.replace('/', '%2F')}/blobs/{digest}/metainfo"

    def served() -> bool:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status == 200

    wait_until(served, timeout, 0.2, message=f"metainfo for {digest}")
