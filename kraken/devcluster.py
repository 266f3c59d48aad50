"""Run a set of Kraken components as local processes: the native ``make devcluster``, and the
clusters that integration tests and benchmarks start.

Each component runs as ``python -m kraken <component> --config <file> --port <port>``, with
its log in ``<workdir>/logs/<name>.log``. Configs are small overlay files that ``extends:``
the component's YAML and override what differs (data directories, peers' addresses), so the
checked-in configs stay the single description of each component.

This is a synchronous supervisor: it is a command-line tool and a test fixture helper, not
part of any server's event loop.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_ROOT = REPO_ROOT / "config"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_overlay(path: Path, extends: Path, overrides: dict[str, Any]) -> Path:
    """Write a config file that extends ``extends`` (absolute) and overrides some keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"extends": str(extends.resolve()), **overrides}, sort_keys=False))
    return path


@dataclass
class Process:
    name: str
    component: str
    port: int
    config: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    popen: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def command(self) -> list[str]:
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


class Supervisor:
    """Starts processes, waits for their ``/health``, stops them all (also on failure)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, Process] = {}

    def start(self, proc: Process, timeout: float = 30.0) -> Process:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(proc.log_path, "ab") as log:
            proc.popen = subprocess.Popen(
                proc.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, cwd=self.workdir,
            )
        self.processes[proc.name] = proc
        self.wait_healthy(proc, timeout)
        return proc

    def wait_healthy(self, proc: Process, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise StartupError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            if http_ok(f"{proc.url}/health"):
                return
            time.sleep(0.05)
        raise StartupError(f"{proc.name} not healthy on {proc.url} within {timeout}s:\n{proc.log_tail()}")

    def stop(self, name: str, timeout: float = 10.0) -> None:
        proc = self.processes.get(name)
        if proc is None or proc.popen is None:
            return
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def kill(self, name: str) -> None:
        """SIGKILL: a crash, for tests of what survives one."""
        proc = self.processes[name]
        if proc.alive():
            proc.popen.kill()
            proc.popen.wait()

    def restart(self, name: str, timeout: float = 30.0) -> Process:
        self.stop(name)
        return self.start(self.processes[name], timeout)

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@dataclass
class HerdPorts:
    testfs: int = 14000
    proxy: int = 15000
    origin: int = 15002
    build_index: int = 15004


def herd_processes(workdir: Path, ports: HerdPorts, config_name: str = "development") -> list[Process]:
    """The herd (testfs, origin, build-index, proxy) wired to each other on 127.0.0.1."""
    workdir = Path(workdir)
    cfg = workdir / "config"
    origin_addr = f"127.0.0.1:{ports.origin}"
    ring = {"hosts": [origin_addr], "max_replica": 1}
    testfs_backend = lambda name_path: [  # noqa: E731 - a two-line table, not a function worth naming
        {"namespace": ".*", "backend": {"testfs": {"addr": f"127.0.0.1:{ports.testfs}", "name_path": name_path}}}
    ]

    def overlay(component: str, overrides: dict) -> Path:
        return write_overlay(cfg / f"{component}.yaml", CONFIG_ROOT / component / f"{config_name}.yaml", overrides)

    def proc(name: str, component: str, port: int, overrides: dict) -> Process:
        return Process(name, component, port, overlay(name, overrides), workdir / "logs" / f"{name}.log")

    return [
        proc("testfs", "testfs", ports.testfs, {"root": str(workdir / "testfs")}),
        proc("origin", "origin", ports.origin, {
            "store": {"root": str(workdir / "origin")}, "advertise": origin_addr, "ring": ring,
            "backends": testfs_backend("sharded_docker_blob"),
        }),
        proc("build-index", "build-index", ports.build_index, {
            "store": {"root": str(workdir / "build-index")}, "origins": ring,
            "backends": testfs_backend("docker_tag"),
        }),
        proc("proxy", "proxy", ports.proxy, {
            "store": {"root": str(workdir / "proxy")}, "origins": ring,
            "build_index": {"addr": f"127.0.0.1:{ports.build_index}"},
        }),
    ]


def _pidfile(workdir: Path) -> Path:
    return workdir / "devcluster.pids"


def cmd_start(workdir: Path) -> int:
    sup = Supervisor(workdir)
    procs = herd_processes(workdir, HerdPorts())
    print(f"kraken devcluster (native processes); data and logs in {workdir}")
    try:
        for proc in procs:
            sup.start(proc)
            print(f"  {proc.name:<12} {proc.url:<24} log {proc.log_path}")
        _pidfile(workdir).write_text("\n".join(str(pid) for pid in [os.getpid(), *(p.popen.pid for p in procs)]))
        print("ready: docker push localhost:15000/<repo>:<tag>   (Ctrl-C or `make devcluster-stop` to stop)")
        stop = {"now": False}

        def on_signal(*_: Any) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["now"]:
            dead = [p for p in procs if not p.alive()]
            if dead:
                print(f"{dead[0].name} exited unexpectedly:\n{dead[0].log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    except StartupError as e:
        print(f"devcluster failed to start: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping devcluster")
        sup.stop_all()
        _pidfile(workdir).unlink(missing_ok=True)


def cmd_stop(workdir: Path) -> int:
    pidfile = _pidfile(workdir)
    if not pidfile.exists():
        print(f"no devcluster running from {workdir}")
        return 0
    supervisor, *children = map(int, pidfile.read_text().split())
    _terminate(supervisor, timeout=20.0)
    for pid in children:  # only still alive if the supervisor itself had died
        _terminate(pid, timeout=10.0)
    pidfile.unlink(missing_ok=True)
    print("devcluster stopped")
    return 0


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kraken.devcluster")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--workdir", default=os.environ.get("DEVCLUSTER_DIR", "/tmp/kraken-devcluster"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return cmd_start(workdir) if args.action == "start" else cmd_stop(workdir)


if __name__ == "__main__":
    sys.exit(main())
