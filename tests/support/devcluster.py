"""Driving ``python -m kraken.devcluster start`` from a test: the subprocess with its output
read line by line, the environment it runs in, and parameter files moved to free ports (the
devcluster tests, plain and with ``--tls``)."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kraken.devcluster import REPO_ROOT, free_port

READY_TIMEOUT = 90.0
EXIT_TIMEOUT = 60.0

#: A Docker socket nothing listens on: the devcluster's own choice must then be native processes.
NO_DAEMON = "unix:///nonexistent/kraken-test/docker.sock"


def devcluster_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", DOCKER_HOST=NO_DAEMON)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("KRAKEN_DEVCLUSTER", None)
    return env


class Devcluster:
    """``python -m kraken.devcluster start`` in a subprocess, its output read line by line."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kraken.devcluster", "start", "--workdir", str(workdir), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=devcluster_env(), cwd=REPO_ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """Block until a line starting with ``prefix`` is printed; fail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {prefix!r} line within {timeout}s; output so far:\n{self.output}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(EXIT_TIMEOUT)
                if "already in use" in self.output:  # taken between the fixture's check and the start
                    pytest.skip(f"another process took a devcluster port meanwhile:\n{self.output}")
                pytest.fail(f"devcluster exited ({self.proc.returncode}) before {prefix!r}:\n{self.output}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        while True:  # collect what was printed after the last line waited for
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def cleanup(self) -> None:
        """Whatever happened: no supervisor and no component left running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Components whose supervisor died are stopped by PID from the state file.
        subprocess.run([sys.executable, "-m", "kraken.devcluster", "stop", "--workdir", str(self.workdir)],
                       env=devcluster_env(), cwd=REPO_ROOT, capture_output=True, timeout=EXIT_TIMEOUT, check=False)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def params_with_free_ports(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    """A copy of examples/devcluster's parameter files with every port moved to a free one, as
    a user edits them (the seed's "16000 is taken: use 8080")."""
    params = tmp_path / "params"
    params.mkdir()
    moved: dict[int, int] = {}
    for src in (REPO_ROOT / "examples" / "devcluster").glob("*_param.sh"):
        text = src.read_text()
        for default in sorted({int(w) for w in re.findall(r":-(\d{5})}", text)}):
            moved[default] = free_port()
            text = text.replace(f":-{default}}}", f":-{moved[default]}}}")
        (params / src.name).write_text(text)
    return params, moved
