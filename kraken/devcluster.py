"""Run a set of Kraken components as local processes: the native ``make devcluster``, one
host's share of a multi-host cluster, the inside of the Docker images, and the clusters that
integration tests and benchmarks start.

Each component runs as ``python -m kraken <component> --config <file> --port <port>``, with
its log in ``<workdir>/logs/<name>.log`` (or on stdout: ``--logs -``). Configs are small
overlay files that ``extends:`` the component's YAML and override what differs (data
directories, peers' addresses), so the checked-in configs stay the single description of each
component. Ports come from the parameter files ``examples/devcluster/*_param.sh``.

``python -m kraken.devcluster start|stop|health [--workdir DIR]`` is what ``make devcluster``,
``make devcluster-stop``, the deploy scripts and the images' health checks run:

* ``start`` picks the mode (``KRAKEN_DEVCLUSTER``: ``docker`` or ``native``; unset: Docker
  when a daemon answers), and for Docker hands over to :mod:`kraken.dockercluster`. Native:
  it checks that the ports are free (naming the component and the process that holds a busy
  one), starts the herd (testfs, origin, tracker, build-index, proxy; redis-server with
  ``--redis``) and then the agents (``agent-one`` on 16000/16001/16002 and ``agent-two`` on
  17000/17001/17002: registry, P2P, server), prints the endpoint table and a line beginning
  with ``ready:``, and then supervises them until SIGINT (Ctrl-C), SIGTERM or SIGHUP, when it
  stops them all and exits 0. If a component dies on its own it stops the rest and exits 1.
  Its state (its own PID and its children's, with their probes) is in
  ``<workdir>/devcluster.json``. ``--role herd|agent`` starts one host's share.
* ``stop`` (from any shell) signals that supervisor and waits for it (or removes the
  containers of a Docker devcluster); children whose supervisor had died (SIGKILL) are
  stopped by PID. A PID is only signalled when its command line shows it is one of ours, so
  a stale state file never hits an unrelated process.
* ``health`` exits 0 when the supervisor runs and every process answers its probe.

This is a synchronous supervisor: it is a command-line tool and a test fixture helper, not
part of any server's event loop.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where ``config/`` and ``examples/`` are: the repository, or ``KRAKEN_ROOT`` where the
#: project is installed without its source tree (the images put them in /etc/kraken).
FILES_ROOT = Path(os.environ.get("KRAKEN_ROOT") or REPO_ROOT)
CONFIG_ROOT = FILES_ROOT / "config"
EXAMPLES_ROOT = FILES_ROOT / "examples"
DEFAULT_WORKDIR = Path("/tmp/kraken-devcluster")
STATE_FILE = "devcluster.json"
MODE_ENV = "KRAKEN_DEVCLUSTER"
#: The devcluster's modes (``KRAKEN_DEVCLUSTER``), as the start banner names them.
MODES = {"native": "native processes", "docker": "Docker containers"}


#: Where :func:`free_port` looks: above the dev ports (14000-17002), below the kernel's
#: ephemeral range.
_TEST_PORTS_FROM = 20000


def _ephemeral_ports_from() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # IANA's range, macOS's default


def free_port() -> int:
    """A port nothing listens on now, for a process started in a moment.

    Chosen below the kernel's ephemeral range: a port from that range can become the source
    port of any outgoing connection as soon as its server stops, and then restarting that
    server on its port fails.
    """
    top = _ephemeral_ports_from()
    if top - _TEST_PORTS_FROM < 1000:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    while True:
        port = random.randrange(_TEST_PORTS_FROM, top)
        if port_free(port) and port_free(port, "127.0.0.1"):
            return port


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    """True if a server could listen on ``host:port`` now.

    Binds the way the components do (``SO_REUSEADDR``, as aiohttp's ``reuse_address``), so
    connections left in TIME_WAIT by an earlier run don't count as "in use", but any listener
    on the port (on 0.0.0.0, 127.0.0.1 or dual-stack ::) does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def write_overlay(path: Path, extends: Path, overrides: dict[str, Any]) -> Path:
    """Write a config file that extends ``extends`` (absolute) and overrides some keys."""
    import yaml  # here, not at the top: ``stop`` must work without the project's dependencies

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"extends": str(extends.resolve()), **overrides}, sort_keys=False))
    return path


@dataclass
class Process:
    """One component process. ``port`` is its main port (``--port``); ``other_ports`` are the
    further ports it listens on (P2P, an agent's server), which a start needs free as well;
    ``health_port`` is where ``/health`` answers when that is not ``port`` (an agent's
    server port: its main port is the registry). ``argv`` replaces the Kraken command line for
    a process that is not a Kraken component (the herd's redis-server, component ``redis``)."""

    name: str
    component: str
    port: int
    config: Path | None
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    popen: subprocess.Popen | None = None
    other_ports: list[int] = field(default_factory=list)
    health_port: int | None = None
    argv: list[str] | None = None
    #: Where it answers: loopback, unless it listens on one address only (``bind``).
    host: str = "127.0.0.1"

    def bind(self, address: str) -> None:
        """Listen on ``address`` only (``--host``; ``0.0.0.0``: every interface, the default)."""
        self.extra_args += ["--host", address]
        self.host = local_address(address)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.health_port or self.port}/health"

    @property
    def ports(self) -> list[int]:
        return [self.port, *self.other_ports]

    @property
    def probe(self) -> str:
        """What tells that it works: its ``/health`` URL (redis: ``redis://`` and PING)."""
        return f"redis://127.0.0.1:{self.port}" if self.component == "redis" else self.health_url

    def healthy(self) -> bool:
        return probe_ok(self.probe)

    def command(self) -> list[str]:
        if self.argv is not None:
            return list(self.argv)
        return [sys.executable, "-m", "kraken", self.component, "--config", str(self.config),
                "--port", str(self.port), *self.extra_args]

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class StartupError(RuntimeError):
    pass


class Interrupted(StartupError):
    """A stop was requested (signal) while a component was still starting."""


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel SIGTERM the child when its parent dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: nothing to load in the child

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Supervisor:
    """Starts processes, waits for their ``/health``, stops them all (also on failure).

    ``should_stop``, if given, is polled while waiting for a process to become healthy; when
    it returns true the wait ends with ``Interrupted`` (how Ctrl-C during startup stays
    prompt). ``die_with_parent`` makes the kernel stop the children if this process dies
    without stopping them (even by SIGKILL); the command-line supervisor uses it.
    ``logs_to_stdout`` sends the children's output to this process's stdout instead of
    ``logs/<name>.log`` (in a container, where ``docker logs`` collects stdout).
    """

    def __init__(self, workdir: Path, *, should_stop: Callable[[], bool] | None = None,
                 die_with_parent: bool = False, logs_to_stdout: bool = False) -> None:
        self.workdir = Path(workdir)
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, Process] = {}
        self.should_stop = should_stop
        self.die_with_parent = die_with_parent
        self.logs_to_stdout = logs_to_stdout

    def start(self, proc: Process, timeout: float = 30.0) -> Process:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        proc.log_path.parent.mkdir(parents=True, exist_ok=True)
        # prctl is Linux's; elsewhere (macOS) children outlive a SIGKILLed supervisor, and
        # ``stop`` finds them by PID.
        preexec = _die_with_parent(os.getpid()) if self.die_with_parent and sys.platform == "linux" else None
        self.processes[proc.name] = proc
        with contextlib.ExitStack() as files:
            log = None if self.logs_to_stdout else files.enter_context(open(proc.log_path, "ab"))
            proc.popen = subprocess.Popen(
                proc.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, cwd=self.workdir, preexec_fn=preexec,
            )
        self.wait_healthy(proc, timeout)
        return proc

    def wait_healthy(self, proc: Process, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.should_stop is not None and self.should_stop():
                raise Interrupted(f"stop requested while {proc.name} was starting")
            if not proc.alive():
                raise StartupError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            if proc.healthy():
                self._check_listener(proc)
                return
            time.sleep(0.05)
        raise StartupError(f"{proc.name} not healthy on {proc.health_url} within {timeout}s:\n{proc.log_tail()}")

    @staticmethod
    def _check_listener(proc: Process) -> None:
        """The health answer came from ``proc``, not from another process that holds the port
        (then ``proc`` is about to exit with "address already in use")."""
        port = proc.health_port or proc.port
        holder = port_holder(port)
        if holder is not None and proc.popen is not None and holder[0] != proc.popen.pid:
            proc.popen.kill()
            proc.popen.wait()
            raise StartupError(f"{proc.name}: address already in use: port {port} is held by pid {holder[0]} "
                               f"({holder[1]})")

    def _signal(self, proc: Process, sig: int) -> None:
        if proc.alive():
            try:
                proc.popen.send_signal(sig)
            except ProcessLookupError:
                pass

    def _reap(self, proc: Process, timeout: float) -> None:
        if proc.popen is None:
            return
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after ``timeout`` seconds."""
        proc = self.processes.get(name)
        if proc is None or proc.popen is None:
            return
        self._signal(proc, signal.SIGTERM)
        self._reap(proc, timeout)

    def kill(self, name: str) -> None:
        """SIGKILL: a crash, for tests of what survives one."""
        proc = self.processes[name]
        if proc.alive():
            proc.popen.kill()
            proc.popen.wait()

    def restart(self, name: str, timeout: float = 30.0) -> Process:
        self.stop(name)
        return self.start(self.processes[name], timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every process: SIGTERM to all (last started first), then wait for each."""
        procs = [p for p in reversed(list(self.processes.values())) if p.popen is not None]
        for proc in procs:
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            self._reap(proc, max(0.1, deadline - time.monotonic()))


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def local_address(bind_address: str) -> str:
    """Where a server listening on ``bind_address`` answers this host: loopback when it
    listens on every interface (or nothing was said), else that address."""
    return "127.0.0.1" if bind_address in ("", "0.0.0.0", "::") else bind_address


def redis_ok(port: int, timeout: float = 1.0) -> bool:
    """A redis-server on 127.0.0.1:``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def probe_ok(probe: str) -> bool:
    """A process's probe (:attr:`Process.probe`): an HTTP URL that must answer 200, or
    ``redis://127.0.0.1:<port>``."""
    if probe.startswith("redis://"):
        return redis_ok(int(probe.rsplit(":", 1)[1]))
    return http_ok(probe)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """GET ``url`` directly (never through an ``http_proxy`` from the environment): 200?"""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class ParamsError(ValueError):
    """A parameter file (``examples/devcluster/*_param.sh``) is unreadable or lacks a port."""


def load_params(path: Path) -> dict[str, str]:
    """The variables a ``*_param.sh`` file sets, read by sourcing it with bash (the files are
    shell, for the containers' entrypoints too), so ``${VAR:-default}`` lets the environment
    override a value."""
    # The environment comes back through this Python as JSON: macOS's env(1) has no -0.
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    r = subprocess.run(["bash", "-c", 'set -a; . "$1" >&2 && exec "$2" -c "$3"', "params", str(path),
                        sys.executable, dump], capture_output=True, timeout=10)
    if r.returncode != 0:
        raise ParamsError(f"{path}: {r.stderr.decode(errors='replace').strip() or 'cannot be read'}")
    return dict(json.loads(r.stdout))


def param_port(params: dict[str, str], name: str, source: Path) -> int:
    value = params.get(name, "")
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ParamsError(f"{source}: {name}={value!r} is not a port")
    return int(value)


class PortParams:
    """Ports named by a parameter file's variables: ``PARAMS`` maps each variable to a field.
    Read from a file (``from_params``), and handed to a container's entrypoint as the same
    variables (``params``)."""

    PARAMS: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_params(cls, path: Path) -> Self:
        params = load_params(path)
        return cls(**{field_name: param_port(params, var, path) for var, field_name in cls.PARAMS.items()})

    def params(self) -> dict[str, str]:
        return {var: str(getattr(self, field_name)) for var, field_name in self.PARAMS.items()}


@dataclass
class HerdPorts(PortParams):
    #: ``herd_param.sh``'s variables (the seed's names).
    PARAMS: ClassVar[dict[str, str]] = {
        "TESTFS_PORT": "testfs", "REDIS_PORT": "redis", "PROXY_PORT": "proxy", "ORIGIN_PEER_PORT": "origin_p2p",
        "ORIGIN_SERVER_PORT": "origin", "TRACKER_PORT": "tracker", "BUILD_INDEX_PORT": "build_index"}

    testfs: int = 14000
    proxy: int = 15000
    origin: int = 15002
    build_index: int = 15004
    tracker: int = 15003
    #: Where ``origin`` seeds (BitTorrent); the tracker's ``origin_p2p`` maps it.
    origin_p2p: int = 15001
    #: Further origins on the same ring as ``origin`` (which stays the first, and the only one
    #: ``make devcluster`` runs); tests of routing and replication across origins use them.
    extra_origins: list[int] = field(default_factory=list)
    #: The P2P ports of ``extra_origins``, in order; free ports are picked for any not given.
    extra_origins_p2p: list[int] = field(default_factory=list)
    #: The herd's redis-server (the tracker's peer store), when it runs one.
    redis: int = 14001

    def __post_init__(self) -> None:
        missing = len(self.extra_origins) - len(self.extra_origins_p2p)
        self.extra_origins_p2p = [*self.extra_origins_p2p, *(free_port() for _ in range(missing))]

    @classmethod
    def free(cls, origins: int = 1) -> HerdPorts:
        """Every port free (tests run herds beside each other and beside ``make devcluster``)."""
        return cls(testfs=free_port(), proxy=free_port(), origin=free_port(), build_index=free_port(),
                   tracker=free_port(), origin_p2p=free_port(),
                   extra_origins=[free_port() for _ in range(origins - 1)], redis=free_port())

    @property
    def origins(self) -> list[int]:
        return [self.origin, *self.extra_origins]

    @property
    def origins_p2p(self) -> list[int]:
        return [self.origin_p2p, *self.extra_origins_p2p[:len(self.extra_origins)]]


@dataclass
class AgentPorts(PortParams):
    """An agent's three ports: its registry (``docker pull`` from it), P2P and agent server."""

    #: ``agent_*_param.sh``'s variables.
    PARAMS: ClassVar[dict[str, str]] = {
        "AGENT_REGISTRY_PORT": "registry", "AGENT_PEER_PORT": "p2p", "AGENT_SERVER_PORT": "server"}

    registry: int
    p2p: int
    server: int

    @classmethod
    def free(cls) -> AgentPorts:
        return cls(registry=free_port(), p2p=free_port(), server=free_port())


def herd_processes(
    workdir: Path, ports: HerdPorts, config_name: str = "development", max_replica: int = 1,
    overrides: dict[str, dict[str, Any]] | None = None, host: str = "127.0.0.1",
    config_dir: Path = CONFIG_ROOT, redis: bool = False,
) -> list[Process]:
    """The herd (testfs, the origins, tracker, build-index, proxy) wired to each other at
    ``host``: the address they advertise, and the one agents on other hosts reach them at.

    Every origin is on one ring (each blob owned by ``max_replica`` of them) and the proxy,
    build-index and tracker route over that ring. The origins are named ``origin``,
    ``origin-2``, ..., each with its store in ``workdir/<name>`` and its own P2P port, which
    the tracker's ``origin_p2p`` maps; all write back to the one testfs. ``overrides`` (by
    component) is merged into each process's overlay, e.g. shorter intervals for a test.
    ``redis`` runs a redis-server on ``ports.redis`` (local to the herd) as the tracker's peer
    store, as the seed's herd does.
    """
    from kraken.config import deep_merge  # here, not at the top: ``stop`` must work without PyYAML

    workdir = Path(workdir)
    cfg = workdir / "config"
    origin_addrs = [f"{host}:{port}" for port in ports.origins]
    ring = {"hosts": origin_addrs, "max_replica": max_replica}
    extra = overrides or {}
    testfs_backend = lambda name_path: [  # noqa: E731 - a two-line table, not a function worth naming
        {"namespace": ".*", "backend": {"testfs": {"addr": f"{host}:{ports.testfs}", "name_path": name_path}}}
    ]

    def overlay(name: str, component: str, settings: dict) -> Path:
        return write_overlay(cfg / f"{name}.yaml", config_dir / component / f"{config_name}.yaml",
                             deep_merge(settings, extra.get(component, {})))

    def proc(name: str, component: str, port: int, settings: dict, other_ports: tuple[int, ...] = ()) -> Process:
        return Process(name, component, port, overlay(name, component, settings), workdir / "logs" / f"{name}.log",
                       other_ports=list(other_ports))

    origins: list[Process] = []
    for i, (port, p2p_port, addr) in enumerate(zip(ports.origins, ports.origins_p2p, origin_addrs)):
        name = "origin" if i == 0 else f"origin-{i + 1}"
        origins.append(proc(name, "origin", port, {
            "store": {"root": str(workdir / name)}, "advertise": addr, "ring": ring,
            "backends": testfs_backend("sharded_docker_blob"),
            "p2p": {"listen": {"port": p2p_port}},
        }, (p2p_port,)))
    tracker_store = {"store": "redis", "redis": {"addr": f"127.0.0.1:{ports.redis}"}} if redis else {}
    return [
        *([redis_process(workdir, ports.redis)] if redis else []),
        proc("testfs", "testfs", ports.testfs, {"root": str(workdir / "testfs")}),
        *origins,
        proc("tracker", "tracker", ports.tracker, {
            "origins": ring,
            "origin_p2p": {addr: f"{host}:{p2p}" for addr, p2p in zip(origin_addrs, ports.origins_p2p)},
            **tracker_store,
        }),
        proc("build-index", "build-index", ports.build_index, {
            "store": {"root": str(workdir / "build-index")}, "origins": ring,
            "backends": testfs_backend("docker_tag"),
        }),
        proc("proxy", "proxy", ports.proxy, {
            "store": {"root": str(workdir / "proxy")}, "origins": ring,
            "build_index": {"addr": f"{host}:{ports.build_index}"},
        }),
    ]


def redis_process(workdir: Path, port: int) -> Process:
    """A redis-server for the tracker, on loopback only, keeping nothing on disk: peers
    re-announce every few seconds, so a restarted store refills itself."""
    data = Path(workdir) / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(data), "--daemonize", "no"]
    return Process("redis", "redis", port, None, Path(workdir) / "logs" / "redis.log", argv=argv)


def agent_processes(
    workdir: Path, ports: HerdPorts, agents: dict[str, AgentPorts], config_name: str = "development",
    overrides: dict[str, Any] | None = None, herd_host: str = "127.0.0.1", peer_ip: str = "",
    config_dir: Path = CONFIG_ROOT,
) -> list[Process]:
    """Agents (one per entry of ``agents``, by name) pulling from the herd at ``herd_host``, ``ports``.

    Each has its store in ``workdir/<name>`` and talks to the herd's tracker and build-index.
    The ports are given as the agent's flags (``--port``, ``--server-port``, ``--peer-port``)
    rather than in the overlay, so its log shows them; its ``/health`` is on the server port.
    ``overrides`` is merged into every agent's overlay.
    """
    from kraken.config import deep_merge  # here, not at the top: ``stop`` must work without PyYAML

    workdir = Path(workdir)
    procs = []
    for name, agent in agents.items():
        config = write_overlay(workdir / "config" / f"{name}.yaml", config_dir / "agent" / f"{config_name}.yaml",
                               deep_merge({
                                   "store": {"root": str(workdir / name)},
                                   "tracker": {"addr": f"{herd_host}:{ports.tracker}"},
                                   "build_index": {"addr": f"{herd_host}:{ports.build_index}"},
                                   "origins": {"hosts": [f"{herd_host}:{port}" for port in ports.origins]},
                               }, overrides or {}))
        procs.append(Process(
            name, "agent", agent.registry, config, workdir / "logs" / f"{name}.log",
            extra_args=["--server-port", str(agent.server), "--peer-port", str(agent.p2p),
                        *(["--peer-ip", peer_ip] if peer_ip else [])],
            other_ports=[agent.p2p, agent.server], health_port=agent.server,
        ))
    return procs


# --------------------------------------------------------------------------------------------
# the command line: python -m kraken.devcluster start|stop
# --------------------------------------------------------------------------------------------

#: What answers on each process's probe port (an agent's server port, else its port), for
#: the endpoint table.
_PROBES = {"proxy": "/v2/"}


def _endpoint(proc: Process) -> str:
    if proc.component == "redis":
        return proc.probe
    return f"http://{proc.host}:{proc.health_port or proc.port}{_PROBES.get(proc.component, '/health')}"


def _out(msg: str = "", file: Any = None) -> None:
    """Print and flush; a terminal that went away (SIGHUP, closed pipe) must not stop a shutdown."""
    try:
        print(msg, file=file or sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def _err(msg: str) -> None:
    _out(msg, sys.stderr)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2: stat.rfind(b")") + 3] not in (b"Z", b"X")


def port_holder(port: int) -> tuple[int, str] | None:
    """(pid, command line) of the process listening on TCP ``port``, if this user can see it."""
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
                    return int(entry), _cmdline(int(entry))
            except OSError:
                continue
    return None


def _holder_workdir(cmdline: str) -> Path | None:
    """The devcluster work dir of a ``python -m kraken ... --config DIR/config/X.yaml`` process."""
    args = cmdline.split()
    if "kraken" not in args or "--config" not in args[:-1]:
        return None
    config = Path(args[args.index("--config") + 1])
    return config.parent.parent if config.parent.name == "config" else None


def _stop_hint(workdir: Path) -> str:
    arg = "" if workdir == DEFAULT_WORKDIR else f" DEVCLUSTER_DIR={workdir}"
    return f"`make devcluster-stop{arg}` (or: python -m kraken.devcluster stop --workdir {workdir})"


def _busy_ports_message(busy: list[tuple[Any, int]], workdir: Path) -> str:
    """What holds each busy port of (process or container: anything with a ``name``, port)."""
    lines = []
    pids: set[int] = set()
    stale_dirs: set[Path] = set()
    for proc, port in busy:
        holder = port_holder(port)
        if holder:
            pids.add(holder[0])
            if (d := _holder_workdir(holder[1])) is not None:
                stale_dirs.add(d)
        who = f"pid {holder[0]} ({holder[1][:160]})" if holder else "another process"
        lines.append(f"devcluster: port {port} ({proc.name}) is already in use by {who}")
    lines.append("devcluster: not started. To free the port(s):")
    for d in sorted(stale_dirs or {workdir}):
        what = f"it is a devcluster's (work dir {d})" if stale_dirs else "if it is an earlier devcluster"
        lines.append(f"  - {what}: stop it with {_stop_hint(d)}")
    kill = f": kill {' '.join(map(str, sorted(pids)))}" if pids else ""
    lines.append(f"  - otherwise stop the process holding it{kill}   "
                 f"(see who: ss -ltnp 'sport = :{busy[0][1]}')")
    return "\n".join(lines)


def _state_path(workdir: Path) -> Path:
    return workdir / STATE_FILE


def _read_state(workdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_state_path(workdir).read_text())
    except (OSError, ValueError):
        return None


def _write_state(workdir: Path, state: dict[str, Any]) -> None:
    tmp = _state_path(workdir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(_state_path(workdir))


def _is_our_supervisor(pid: int) -> bool:
    return _pid_alive(pid) and "kraken.devcluster" in _cmdline(pid)


def _is_our_child(pid: int, workdir: Path) -> bool:
    cmd = _cmdline(pid)
    return _pid_alive(pid) and " -m kraken " in f" {cmd} " and str(workdir / "config") in cmd


def choose_mode() -> tuple[str, str]:
    """(mode, why): ``KRAKEN_DEVCLUSTER`` if set, else Docker when a daemon answers, else
    native processes. Raises ``SystemExit`` for an unknown mode."""
    from kraken import dockercluster

    asked = os.environ.get(MODE_ENV, "").strip().lower()
    if asked in ("", "auto"):
        if dockercluster.daemon_answers():
            return "docker", f"a Docker daemon answers; {MODE_ENV}=native runs local processes instead"
        return "native", f"no Docker daemon answers; {MODE_ENV}=docker insists on containers"
    if asked in MODES:
        return asked, f"{MODE_ENV}={asked}"
    raise SystemExit(f"devcluster: {MODE_ENV}={asked!r} is not a mode: use docker or native")


class _StopFlag:
    """Set from a signal handler, read by the main loop (no locks: nothing to deadlock on)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int, _frame: Any = None) -> None:
        if self.signum is None:
            self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None


#: What ``start --role`` runs: the whole devcluster, or one host's share of a multi-host cluster.
ROLES = ("all", "herd", "agent")


def cmd_start(workdir: Path, ports: HerdPorts, agents: dict[str, AgentPorts],
              role: str = "all", herd_host: str = "127.0.0.1", config_name: str = "development",
              peer_ip: str = "", config_dir: Path = CONFIG_ROOT, redis: bool = False,
              logs_to_stdout: bool = False, bind_address: str = "") -> int:
    """The herd on ``ports``, then ``agents`` (name -> ports), supervised until a stop.

    ``role`` ``herd`` or ``agent`` starts only that part, for a multi-host cluster: the herd
    advertises ``herd_host`` (its address on the network), the agent (one, named ``agent``)
    pulls from the herd at ``herd_host``.
    ``redis`` gives the herd a redis-server as the tracker's store; ``logs_to_stdout`` prints
    every process's log instead of writing ``logs/<name>.log`` (in a container);
    ``bind_address`` is where the herd's servers listen (default every interface).
    """
    workdir = workdir.resolve()
    state = _read_state(workdir)
    if state and _is_our_supervisor(state.get("supervisor", -1)) and state["supervisor"] != os.getpid():
        _err(f"devcluster: already running from {workdir} (supervisor pid {state['supervisor']}); "
             f"stop it with {_stop_hint(workdir)}")
        return 1

    procs = []
    if role in ("all", "herd"):
        procs += herd_processes(workdir, ports, config_name, host=herd_host, config_dir=config_dir, redis=redis)
    if bind_address:
        for proc in procs:
            if proc.component != "redis":
                proc.bind(bind_address)
    if role in ("all", "agent"):
        procs += agent_processes(workdir, ports, agents, config_name, herd_host=herd_host, peer_ip=peer_ip,
                                 config_dir=config_dir)
    busy = [(p, port) for p in procs for port in p.ports if not port_free(port)]
    if busy:
        _err(_busy_ports_message(busy, workdir))
        return 1

    stop = _StopFlag()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop.set)
    sup = Supervisor(workdir, should_stop=stop, die_with_parent=True, logs_to_stdout=logs_to_stdout)
    state = {"mode": "native", "supervisor": os.getpid(), "workdir": str(workdir), "processes": {}}
    _write_state(workdir, state)

    _out(f"  work dir  {workdir}")
    _out(f"  logs      {'stdout' if logs_to_stdout else f'{sup.log_dir}/<component>.log'}")
    code = 0
    try:
        for proc in procs:
            banner = (f"=== devcluster: starting {proc.name} at "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(proc.command())}")
            if logs_to_stdout:
                _out(banner)
            else:
                with open(proc.log_path, "a") as log:
                    log.write(banner + "\n")
            sup.start(proc)
            state["processes"][proc.name] = {"pid": proc.popen.pid, "port": proc.port,
                                             "component": proc.component, "probe": proc.probe}
            _write_state(workdir, state)
            _out(f"  started   {proc.name} (pid {proc.popen.pid})")
        _out("")
        _out(f"  {'component':<12} {'endpoint':<32} {'pid':<8} log")
        for proc in procs:
            _out(f"  {proc.name:<12} {_endpoint(proc):<32} {proc.popen.pid:<8} "
                 f"{'stdout' if logs_to_stdout else proc.log_path}")
        _out("")
        for proc in procs:
            if proc.component == "agent":
                _out(f"  {proc.name} pulls on localhost:{proc.port} (P2P port {proc.other_ports[0]})")
        if role != "agent":
            _out(f"  origin seeds on P2P port {ports.origin_p2p}, announced as {herd_host}:{ports.origin_p2p}")
            _out(f"ready: push through {herd_host if role == 'herd' else 'localhost'}:{ports.proxy}, e.g. docker push "
                 f"localhost:{ports.proxy}/<repo>:<tag>   (Ctrl-C or `make devcluster-stop` stops it)")
        else:
            _out(f"ready: pull through localhost:{procs[0].port} (herd at {herd_host})")
        while not stop():
            dead = [p for p in procs if not p.alive()]
            if dead:
                _err(f"devcluster: {dead[0].name} exited unexpectedly with {dead[0].popen.returncode}; "
                     f"the end of {dead[0].log_path}:\n{dead[0].log_tail()}")
                code = 1
                break
            time.sleep(0.2)
    except Interrupted:
        _out("devcluster: stop requested during startup")
    except StartupError as e:
        _err(f"devcluster: failed to start: {e}")
        code = 1
    finally:
        why_stop = f" ({signal.Signals(stop.signum).name})" if stop.signum else ""
        _out(f"devcluster: stopping{why_stop}")
        sup.stop_all()
        if (_read_state(workdir) or {}).get("supervisor") == os.getpid():
            _state_path(workdir).unlink(missing_ok=True)
    _out(f"devcluster: stopped{'' if code == 0 else ' (after a failure)'}")
    return code


def cmd_stop(workdir: Path, timeout: float = 60.0) -> int:
    workdir = workdir.resolve()
    state = _read_state(workdir)
    if state is None:
        _out(f"devcluster: none running from {workdir} (no {_state_path(workdir)})")
        return 0
    if state.get("mode") == "docker":
        from kraken import dockercluster

        code = dockercluster.stop(state.get("containers", []))
        _state_path(workdir).unlink(missing_ok=True)
        return code
    supervisor = int(state.get("supervisor", -1))
    if _is_our_supervisor(supervisor):
        _out(f"devcluster: stopping supervisor pid {supervisor}")
        _terminate(supervisor, timeout)
    children = {name: int(info["pid"]) for name, info in state.get("processes", {}).items()}
    for name, pid in children.items():  # only still alive if the supervisor itself had died
        if _is_our_child(pid, workdir):
            _out(f"devcluster: stopping leftover {name} (pid {pid})")
            _terminate(pid, 10.0)
    _state_path(workdir).unlink(missing_ok=True)
    _out("devcluster: stopped")
    return 0


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM ``pid`` (not our child), wait for it to go, SIGKILL after ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def cmd_health(workdir: Path) -> int:
    """Exit 0 if the supervisor from ``workdir`` runs and every process it started answers its
    probe; else name what does not (the containers' health check)."""
    state = _read_state(workdir.resolve())
    if state is None or not _pid_alive(int(state.get("supervisor", -1))):
        _err(f"devcluster: no supervisor running from {workdir}")
        return 1
    failing = [name for name, info in state.get("processes", {}).items() if not probe_ok(info["probe"])]
    for name in failing:
        _err(f"devcluster: {name} does not answer at {state['processes'][name]['probe']}")
    if not state.get("processes"):
        _err("devcluster: still starting")
    return 1 if failing or not state.get("processes") else 0


#: The devcluster's parameter files (ports a user may change): one for the herd, one per agent.
DEVCLUSTER_PARAMS = EXAMPLES_ROOT / "devcluster"


def agent_name(params: Path) -> str:
    """``agent_two_param.sh`` -> ``agent-two``."""
    return params.name.removesuffix(".sh").removesuffix("_param").replace("_", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kraken.devcluster",
        description="Start, stop or probe the devcluster (Docker containers when a daemon answers, "
                    "else local processes), or one host's share of a multi-host cluster.")
    parser.add_argument("action", choices=["start", "stop", "health"])
    parser.add_argument("--role", choices=ROLES, default="all",
                        help="all: the devcluster; herd or agent: this host's share of a multi-host cluster")
    parser.add_argument("--herd-host", default="127.0.0.1",
                        help="the herd's address as other hosts reach it (advertised by the herd, dialled by agents)")
    parser.add_argument("--config-name", default="development", help="<config-dir>/<component>/<name>.yaml to extend")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_ROOT,
                        help="where the component configs are (default %(default)s; the multi-host "
                             "deployment's: examples/multihost/config)")
    parser.add_argument("--herd-params", type=Path, default=DEVCLUSTER_PARAMS / "herd_param.sh",
                        help="the herd's ports (default %(default)s)")
    parser.add_argument("--agent-params", type=Path, action="append",
                        help="an agent's ports, once per agent (default: agent_one_param.sh and "
                             "agent_two_param.sh beside the herd's; with --role agent, agent_one_param.sh)")
    parser.add_argument("--peer-ip", default="", help="an agent host's own address (labels its P2P log lines)")
    parser.add_argument("--redis", action="store_true", help="run a redis-server as the tracker's peer store")
    parser.add_argument("--bind-address", default="",
                        help="where the herd's servers listen (default 0.0.0.0: every interface)")
    parser.add_argument("--logs", default="", help="'-': every process's log to stdout, not <workdir>/logs/")
    parser.add_argument("--docker", action="store_true",
                        help="with stop: remove the devcluster's containers whatever the work dir says "
                             "(make docker_stop)")
    parser.add_argument("--workdir", default=os.environ.get("DEVCLUSTER_DIR") or str(DEFAULT_WORKDIR),
                        help="data, configs, logs and state (default: $DEVCLUSTER_DIR or %(default)s)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if args.action == "health":
        return cmd_health(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.action == "stop":
        if args.docker:
            from kraken import dockercluster

            _state_path(workdir.resolve()).unlink(missing_ok=True)
            return dockercluster.stop()
        return cmd_stop(workdir)

    agent_files = args.agent_params or [args.herd_params.parent / "agent_one_param.sh",
                                        *([args.herd_params.parent / "agent_two_param.sh"] if args.role == "all" else [])]
    try:
        ports = HerdPorts.from_params(args.herd_params)
        agents = {("agent" if args.role == "agent" else agent_name(f)): AgentPorts.from_params(f) for f in agent_files}
    except ParamsError as e:
        _err(f"devcluster: {e}")
        return 1
    mode, why = choose_mode()
    _out(f"kraken devcluster: {MODES[mode]} ({why})")
    if mode == "docker":
        from kraken import dockercluster

        return dockercluster.start(
            workdir.resolve(), ports, agents, role=args.role, herd_host=args.herd_host,
            config_name=args.config_name, config_dir=args.config_dir.resolve(), peer_ip=args.peer_ip,
            bind_address=args.bind_address)
    return cmd_start(workdir, ports, agents, role=args.role, herd_host=args.herd_host, config_name=args.config_name,
                     peer_ip=args.peer_ip, config_dir=args.config_dir.resolve(), redis=args.redis,
                     logs_to_stdout=args.logs == "-", bind_address=args.bind_address)


if __name__ == "__main__":
    sys.exit(main())
