"""Native mode: the devcluster (or one host's share of a multi-host cluster) as local
processes, supervised in the foreground until SIGINT (Ctrl-C), SIGTERM or SIGHUP.

``start`` checks the plan first (no two components on one port, every config loads, every
port free, naming who holds a busy one and the command that frees it), starts the herd and
then the agents, prints the endpoint table and a line beginning with ``ready:``, and stops
them all when asked or when one dies on its own (exit 1, with the end of that component's log
from this run). Its state is in ``<workdir>/devcluster.json``. ``stop`` (from any shell)
signals that supervisor, or removes the containers of a Docker devcluster; children whose
supervisor had died are stopped by PID, and only when their command line shows they are ours.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kraken.devcluster import docker as dockermode
from kraken.devcluster.checks import busy_ports, check_plan, scratch_dir
from kraken.devcluster.multiherd import HerdLayout, agent_sections, host_processes
from kraken.devcluster.net import ProbeTLS, endpoint_url, probe_ok
from kraken.devcluster.params import CONFIG_ROOT, AgentPorts, HerdPorts
from kraken.devcluster.plan import REDIS_DIR, agent_processes, herd_processes, port_owners
from kraken.devcluster.procfs import pid_alive
from kraken.devcluster.state import (
    err,
    is_our_child,
    is_our_supervisor,
    out,
    read_state,
    state_path,
    stop_hint,
    write_state,
)
from kraken.devcluster.supervise import Interrupted, Process, StartupError, Supervisor

#: ``--herd-host`` values meaning "this host only".
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
if TYPE_CHECKING:
    from kraken.devcluster.tls import DevPki

#: What answers on each process's probe port (an agent's server port, else its port), for
#: the endpoint table.
_PROBES = {"proxy": "/v2/"}


def _endpoint(proc: Process) -> str:
    if proc.component == "redis":
        return proc.probe
    return endpoint_url(proc.host, proc.health_port or proc.port, _PROBES.get(proc.component, "/health"),
                        secure=proc.tls is not None)


def plan(workdir: Path, ports: HerdPorts, agents: dict[str, AgentPorts], *, role: str = "all",
         herd_host: str = "127.0.0.1", config_name: str = "development", peer_ip: str = "",
         config_dir: Path = CONFIG_ROOT, redis: bool = False, bind_address: str = "",
         overlay_dir: Path | None = None, tls: DevPki | None = None,
         layout: HerdLayout | None = None) -> list[Process]:
    """The processes of ``role``, in start order, their overlays written to ``overlay_dir``
    (default ``workdir/config``; see ``cmd_start``). The Docker mode's containers run these
    processes too, so both modes check this plan.

    The whole cluster (``role`` all) with the herd at loopback listens on 127.0.0.1 only, P2P
    included; a multi-host role listens where ``bind_address`` says (every interface by
    default), since other hosts reach it, except testfs and redis: only the herd uses them, on
    loopback. With ``tls`` (a development PKI, see :mod:`kraken.devcluster.tls`) every hop is
    TLS and the internal components require the cluster's client certificate; the processes
    that serve HTTPS are probed with it. With ``layout`` (a herd on several hosts) the herd
    role runs this host's share of it (``herd_host`` is this host, one of ``layout.hosts``) and
    agents use all its trackers, build-indexes and origins."""
    from kraken.config import deep_merge  # here, not at the top: ``stop`` must work without PyYAML

    overrides = tls.overrides() if tls is not None else {}
    procs = []
    # The whole cluster on this host, reached at loopback: no other host needs any of its
    # ports, so nothing listens beyond loopback (HTTP and P2P alike).
    local_only = role == "all" and not bind_address and herd_host in LOOPBACK_HOSTS
    p2p_local = {"p2p": {"listen": {"host": "127.0.0.1"}}} if local_only else {}
    if role == "herd" and layout is not None:
        return host_processes(workdir, ports, layout, herd_host, config_name=config_name, config_dir=config_dir,
                              overlay_dir=overlay_dir)
    if role in ("all", "herd"):
        # Several origins: each blob on two of them, so losing one loses nothing.
        procs += herd_processes(workdir, ports, config_name, host=herd_host, config_dir=config_dir, redis=redis,
                                overlay_dir=overlay_dir, max_replica=min(2, len(ports.origins)),
                                overrides=deep_merge(overrides, {"origin": p2p_local}))
    if bind_address or local_only:
        for proc in procs:
            # redis and testfs are the herd's own: on loopback whatever the others listen on.
            if proc.component not in ("redis", "testfs"):
                proc.bind(bind_address or "127.0.0.1")
    if role in ("all", "agent"):
        agent_procs = agent_processes(workdir, ports, agents, config_name, herd_host=herd_host, peer_ip=peer_ip,
                                      config_dir=config_dir, overlay_dir=overlay_dir,
                                      herd=agent_sections(layout, ports) if layout is not None else None,
                                      overrides=deep_merge(overrides.get("agent", {}), p2p_local))
        for proc in agent_procs if local_only else ():
            proc.bind("127.0.0.1")
        procs += agent_procs
    if tls is not None:
        serving = tls.serving()
        for proc in procs:
            proc.tls = tls.probe() if proc.component in serving else None
    return procs


class _StopFlag:
    """Set from a signal handler, read by the main loop (no locks: nothing to deadlock on)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int, _frame: Any = None) -> None:
        if self.signum is None:
            self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None


def cmd_start(workdir: Path, ports: HerdPorts, agents: dict[str, AgentPorts],
              role: str = "all", herd_host: str = "127.0.0.1", config_name: str = "development",
              peer_ip: str = "", config_dir: Path = CONFIG_ROOT, redis: bool = False,
              logs_to_stdout: bool = False, bind_address: str = "", tls: DevPki | None = None,
              tls_hosts: list[str] | None = None, layout: HerdLayout | None = None,
              restart_after: float | None = None) -> int:
    """The herd on ``ports``, then ``agents`` (name -> ports), supervised until a stop.

    ``role`` ``herd`` or ``agent`` starts only that part, for a multi-host cluster: the herd
    advertises ``herd_host`` (its address on the network), the agent (one, named ``agent``)
    pulls from the herd at ``herd_host``.
    ``redis`` gives the herd a redis-server as the tracker's store; ``logs_to_stdout`` prints
    every process's log instead of writing ``logs/<name>.log`` (in a container);
    ``bind_address`` is where the herd's servers listen (default: see :func:`plan`).
    ``tls`` turns TLS and mTLS on for every hop; with ``tls_hosts`` its files are made (or
    renewed) for those names after the plan is checked, without it they must exist.
    ``layout``: a herd on several hosts (see :func:`plan`). ``restart_after``: a component that
    exits is started again that many seconds later (as systemd or a container's restart
    policy would), instead of the whole host stopping: a herd host that survives a crash.
    """
    workdir = workdir.resolve()
    running = read_state(workdir)
    if running and is_our_supervisor(running.get("supervisor", -1)) and running["supervisor"] != os.getpid():
        err(f"devcluster: already running from {workdir} (supervisor pid {running['supervisor']}); "
            f"stop it with {stop_hint(workdir)}")
        return 1

    def planned(overlay_dir: Path | None = None) -> list[Process]:
        return plan(workdir, ports, agents, role=role, herd_host=herd_host, config_name=config_name,
                    peer_ip=peer_ip, config_dir=config_dir, redis=redis, bind_address=bind_address,
                    overlay_dir=overlay_dir, tls=tls, layout=layout)

    with scratch_dir() as scratch:  # checked before anything is created: a refused start leaves no trace
        procs = planned(scratch)
        owners = port_owners(procs)
        problem = check_plan(owners, procs) or busy_ports(owners, workdir)
    if problem is not None:
        err(problem)
        return 1
    workdir.mkdir(parents=True, exist_ok=True)
    if tls is not None and tls_hosts is not None:
        written = tls.ensure(tls_hosts)
        out(f"  tls       {tls.dir}: {'made ' + ', '.join(written) if written else 'certificates reused'}")
    procs = planned()
    if any(proc.component == "redis" for proc in procs):  # asked for, or several trackers
        (workdir / REDIS_DIR).mkdir(exist_ok=True)

    stop = _StopFlag()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop.set)
    sup = Supervisor(workdir, should_stop=stop, die_with_parent=True, logs_to_stdout=logs_to_stdout)
    children: dict[str, dict[str, Any]] = {}
    state = {"mode": "native", "supervisor": os.getpid(), "workdir": str(workdir), "processes": children}
    write_state(workdir, state)

    out(f"  work dir  {workdir}")
    out(f"  logs      {'stdout' if logs_to_stdout else f'{sup.log_dir}/<component>.log'}")
    code = 0
    try:
        for proc in procs:
            banner = (f"=== devcluster: starting {proc.name} at "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(proc.command())}")
            if logs_to_stdout:
                out(banner)
            else:
                with open(proc.log_path, "a") as log:
                    log.write(banner + "\n")
            pid = sup.start(proc).pid
            children[proc.name] = {"pid": pid, "port": proc.port, "component": proc.component, "probe": proc.probe,
                                   **({"tls": vars(proc.tls)} if proc.tls else {})}
            write_state(workdir, state)
            out(f"  started   {proc.name} (pid {pid})")
        out("")
        out(f"  {'component':<12} {'endpoint':<32} {'pid':<8} log")
        for proc in procs:
            out(f"  {proc.name:<12} {_endpoint(proc):<32} {proc.pid:<8} "
                f"{'stdout' if logs_to_stdout else proc.log_path}")
        out("")
        for proc in procs:
            if proc.component == "agent":
                out(f"  {proc.name} pulls on localhost:{proc.port} (P2P port {proc.other_ports[0]})")
        if role != "agent":
            out(f"  origin seeds on P2P port {ports.origin_p2p}, announced as {herd_host}:{ports.origin_p2p}")
            out(f"ready: push through {herd_host if role == 'herd' else 'localhost'}:{ports.proxy}, e.g. docker push "
                f"localhost:{ports.proxy}/<repo>:<tag>   (Ctrl-C or `make devcluster-stop` stops it)")
        else:
            out(f"ready: pull through localhost:{procs[0].port} (herd at {herd_host})")
        restarts = _Restarts(sup, children, state, workdir, restart_after)
        while not stop():
            dead = [p for p in procs if not p.alive()]
            if dead and restart_after is None:
                err(f"devcluster: {dead[0].name} exited unexpectedly with {dead[0].returncode}; "
                    f"this run's end of {dead[0].log_path}:\n{dead[0].log_tail()}")
                code = 1
                break
            restarts.handle(dead)
            time.sleep(0.2)
    except Interrupted:
        out("devcluster: stop requested during startup")
    except StartupError as e:
        err(f"devcluster: failed to start: {e}")
        code = 1
    finally:
        why_stop = f" ({signal.Signals(stop.signum).name})" if stop.signum else ""
        out(f"devcluster: stopping{why_stop}")
        sup.stop_all()
        if (read_state(workdir) or {}).get("supervisor") == os.getpid():
            state_path(workdir).unlink(missing_ok=True)
    out(f"devcluster: stopped{'' if code == 0 else ' (after a failure)'}")
    return code


class _Restarts:
    """``--restart-after``: a component that exited is started again after the delay; its
    new PID goes to the state file. One that fails to start is tried again after the delay."""

    def __init__(self, sup: Supervisor, children: dict[str, dict[str, Any]], state: dict[str, Any],
                 workdir: Path, delay: float | None) -> None:
        self.sup, self.children, self.state, self.workdir = sup, children, state, workdir
        self.delay = delay or 0.0
        self.due: dict[str, float] = {}

    def handle(self, dead: list[Process]) -> None:
        now = time.monotonic()
        for proc in dead:
            if proc.name not in self.due:
                err(f"devcluster: {proc.name} exited with {proc.returncode}; starting it again in {self.delay:g}s")
                self.due[proc.name] = now + self.delay
            elif now >= self.due[proc.name]:
                try:
                    self.sup.start(proc)
                except StartupError as e:
                    err(f"devcluster: {proc.name} did not start again: {e}")
                    self.due[proc.name] = time.monotonic() + self.delay
                    continue
                del self.due[proc.name]
                self.children[proc.name]["pid"] = proc.pid
                write_state(self.workdir, self.state)
                out(f"  restarted {proc.name} (pid {proc.pid})")


def cmd_stop(workdir: Path, timeout: float = 60.0) -> int:
    workdir = workdir.resolve()
    state = read_state(workdir)
    if state is None:
        out(f"devcluster: none running from {workdir} (no {state_path(workdir)})")
        return 0
    if state.get("mode") == "docker":
        code = dockermode.stop(state.get("containers", []))
        state_path(workdir).unlink(missing_ok=True)
        return code
    supervisor = int(state.get("supervisor", -1))
    if is_our_supervisor(supervisor):
        out(f"devcluster: stopping supervisor pid {supervisor}")
        _terminate(supervisor, timeout)
    children = {name: int(info["pid"]) for name, info in state.get("processes", {}).items()}
    for name, pid in children.items():  # only still alive if the supervisor itself had died
        if is_our_child(pid, workdir):
            out(f"devcluster: stopping leftover {name} (pid {pid})")
            _terminate(pid, 10.0)
    state_path(workdir).unlink(missing_ok=True)
    out("devcluster: stopped")
    return 0


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM ``pid`` (not our child), wait for it to go, SIGKILL after ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def cmd_health(workdir: Path) -> int:
    """Exit 0 if the supervisor from ``workdir`` runs and every process it started answers its
    probe; else name what does not (the containers' health check)."""
    state = read_state(workdir.resolve())
    if state is None or not pid_alive(int(state.get("supervisor", -1))):
        err(f"devcluster: no supervisor running from {workdir}")
        return 1
    failing = [name for name, info in state.get("processes", {}).items()
               if not probe_ok(info["probe"], ProbeTLS(**info["tls"]) if info.get("tls") else None)]
    for name in failing:
        err(f"devcluster: {name} does not answer at {state['processes'][name]['probe']}")
    if not state.get("processes"):
        err("devcluster: still starting")
    return 1 if failing or not state.get("processes") else 0
