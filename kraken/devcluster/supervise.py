"""Process supervision: start a component, wait for its probe, stop them all (also on failure).

Synchronous on purpose: this is a command-line tool and a test fixture helper, not part of any
server's event loop.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kraken.devcluster.net import ProbeTLS, endpoint_url, local_address, probe_ok, redis_probe
from kraken.devcluster.params import REPO_ROOT
from kraken.devcluster.procfs import port_holder


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
    popen: subprocess.Popen[bytes] | None = None
    other_ports: list[int] = field(default_factory=list)
    health_port: int | None = None
    argv: list[str] | None = None
    #: Where it answers: loopback, unless it listens on one address only (``bind``).
    host: str = "127.0.0.1"
    #: Where this run's lines begin in ``log_path`` (the log is appended to across runs).
    log_offset: int = 0
    #: Set when it serves HTTPS (its ``tls.server``): the probe's CA and client certificate.
    tls: ProbeTLS | None = None

    def bind(self, address: str) -> None:
        """Listen on ``address`` only (``--host``; ``0.0.0.0``: every interface, the default)."""
        self.extra_args += ["--host", address]
        self.host = local_address(address)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return endpoint_url(self.host, self.port, "", secure=self.tls is not None)

    @property
    def health_url(self) -> str:
        return endpoint_url(self.host, self.health_port or self.port, "/health", secure=self.tls is not None)

    @property
    def ports(self) -> list[int]:
        return [self.port, *self.other_ports]

    @property
    def probe(self) -> str:
        """What tells that it works: its ``/health`` URL (redis: ``redis://`` and PING)."""
        return redis_probe(self.port) if self.component == "redis" else self.health_url

    def healthy(self) -> bool:
        return probe_ok(self.probe, self.tls)

    def command(self) -> list[str]:
        if self.argv is not None:
            return list(self.argv)
        return [sys.executable, "-m", "kraken", self.component, "--config", str(self.config),
                "--port", str(self.port), *self.extra_args]

    @property
    def pid(self) -> int:
        """Its PID (it has been started)."""
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines this run wrote (not an earlier run's, also in the file)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(nothing logged)"


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
            proc.log_offset = log.tell() if log is not None else 0
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
            if proc.popen is None or not proc.alive():
                code = proc.popen.returncode if proc.popen is not None else None
                raise StartupError(f"{proc.name} exited with {code}:\n{proc.log_tail()}")
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
        if holder is not None and proc.popen is not None and holder.pid != proc.popen.pid:
            proc.popen.kill()
            proc.popen.wait()
            raise StartupError(f"{proc.name}: address already in use: port {port} is held by pid {holder.pid} "
                               f"({holder.cmdline})")

    @staticmethod
    def _signal(proc: Process, sig: int) -> None:
        if proc.popen is not None and proc.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(sig)

    @staticmethod
    def _reap(proc: Process, timeout: float) -> None:
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
        if proc.popen is not None and proc.alive():
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

