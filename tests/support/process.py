"""Client subprocesses for the real-client tests: the proxy trap, errors that carry stderr,
long-running daemons stopped by PID (also at interpreter exit), private temp dirs."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until

TRAP_PROXY_URL = "http://127.0.0.1:9"
#: Loopback and the test hosts' subnets (network namespaces: 10.200 for the real-client tests,
#: 10.201 for the multi-host deployment, 10.202 for its Docker mode, 10.203 for it with TLS,
#: 10.204 for the multi-host HA test), which clients reach directly.
NO_PROXY_HOSTS = "127.0.0.1,localhost,10.200.0.0/24,10.201.0.0/24,10.202.0.0/24,10.203.0.0/24,10.204.0.0/24"
#: Environment that sends any non-local HTTP(S) request to a closed port.
#: Both spellings are set because Go prefers upper case and Python's urllib /
#: requests prefer lower case; a stray inherited proxy variable of the other
#: spelling would otherwise win.
PROXY_TRAP_ENV: dict[str, str] = {
    "HTTP_PROXY": TRAP_PROXY_URL,
    "HTTPS_PROXY": TRAP_PROXY_URL,
    "NO_PROXY": NO_PROXY_HOSTS,
    "http_proxy": TRAP_PROXY_URL,
    "https_proxy": TRAP_PROXY_URL,
    "no_proxy": NO_PROXY_HOSTS,
}

DEFAULT_TIMEOUT = 300.0
TMP_PREFIX = "krk-rc-"

# --------------------------------------------------------------------------
# generic process / polling helpers
# --------------------------------------------------------------------------


class ClientError(RuntimeError):
    """A client command exited non-zero; carries everything needed to debug it."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command failed (exit {returncode}): {' '.join(self.cmd)}\n"
            f"--- stderr ---\n{stderr.strip()[-4000:]}\n--- stdout ---\n{stdout.strip()[-2000:]}"
        )


def client_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` plus the proxy trap (plus ``extra``), for any client subprocess."""
    env = dict(os.environ)
    env.update(PROXY_TRAP_ENV)
    if extra:
        env.update(extra)
    return env


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return data


def run_client(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: str | os.PathLike[str] | None = None,
    input: bytes | None = None,
    check: bool = True,
    binary: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """Run a client command with the proxy trap; raise ``ClientError`` on failure.

    Output is captured as bytes and decoded afterwards (unless ``binary``),
    so exact bytes such as a raw manifest can be requested without newline
    translation.  A timeout also raises ``ClientError`` (exit code -1).
    """
    cmd = [os.fspath(a) for a in args]
    try:
        proc = subprocess.run(
            cmd,
            env=dict(env) if env is not None else client_env(),
            cwd=cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = _decode(exc.stderr) + f"\n(timed out after {timeout}s)"
        raise ClientError(cmd, -1, _decode(exc.stdout), stderr) from exc
    if check and proc.returncode != 0:
        raise ClientError(cmd, proc.returncode, _decode(proc.stdout), _decode(proc.stderr))
    if binary:
        return proc
    return subprocess.CompletedProcess(proc.args, proc.returncode, _decode(proc.stdout), _decode(proc.stderr))




def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a reaped-later orphan counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # Field 3 (state) follows the ')' that closes the command name.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def rss_mib(pid: int) -> tuple[float, float]:
    """A process's resident memory now and at its peak (``VmRSS``, ``VmHWM``), in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def _pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM a (non-child) process by PID, wait for it, SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        try:
            wait_until(lambda: not pid_alive(pid), wait, 0.05, message=f"pid {pid} to exit")
            return
        except TimeoutError:
            continue


def pids_mentioning(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (a unique temp path of ours).

    Used to find descendants a daemon started (e.g. dockerd's containerd and
    its shims) that may survive the daemon, so they can be stopped by PID.
    """
    pids = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and marker in _pid_cmdline(int(entry)):
            pids.append(int(entry))
    return pids


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (from /proc/self/mountinfo), deepest first."""
    prefix = str(root)
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 5:
                    continue
                # mountinfo escapes space, tab, newline and backslash as octal.
                mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                if mp == prefix or mp.startswith(prefix + "/"):
                    found.append(mp)
    except OSError:
        return []
    return sorted(set(found), key=len, reverse=True)


def unmount_all_under(root: Path) -> None:
    """Unmount leftovers (dockerd's nsfs netns mounts, overlay mounts) before rm -rf."""
    for mp in mounts_under(root):
        r = subprocess.run(["umount", mp], capture_output=True, check=False)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def remove_tree(root: Path) -> None:
    """Unmount then delete a private temp tree; never follow mounts out of it."""
    if not root.exists():
        return
    unmount_all_under(root)
    shutil.rmtree(root, ignore_errors=True)


def log_tail(path: Path, limit: int = 6000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-limit:].decode("utf-8", errors="replace")


_LIVE: set[BackgroundProcess] = set()
_LIVE_LOCK = threading.Lock()


class BackgroundProcess:
    """A long-running server process with its output in a log file.

    Why a class: every daemon helper needs the same start / is-alive / stop-by-
    PID logic, and a registry of live processes lets an ``atexit`` hook stop
    anything a crashed test left running.
    """

    def __init__(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.args = [os.fspath(a) for a in args]
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else client_env(),
                cwd=cwd,
            )
        with _LIVE_LOCK:
            _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exited(self) -> str | None:
        """None while the process runs, else how it ended: the ``alive`` callback of a wait."""
        code = self.proc.poll()
        return None if code is None else f"{self.args[0]} exited (code {code})"

    def log(self) -> str:
        """Tail of the process log, for error messages (the ``details`` callback of a wait)."""
        return f"--- log of {self.args[0]} ---\n{log_tail(self.log_path)}"

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=30)
            return self.proc.returncode
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)


def _stop_all_live() -> None:
    """atexit safety net: stop processes whose owner never called stop()."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for p in live:
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            p.stop(timeout=10)


atexit.register(_stop_all_live)


def private_tmpdir(kind: str) -> Path:
    """Short private temp dir (unix socket paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{kind}-", dir="/tmp"))


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (see scripts/install-system-deps.sh)")
    return path
