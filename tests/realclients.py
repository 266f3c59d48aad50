"""Helpers and pytest fixtures that drive *real* registry clients.

Why: Kraken must interoperate with the clients people actually use (dockerd,
containerd/ctr, podman, skopeo, oras).  These helpers start those clients (and
a baseline distribution registry) by hand, in private temporary directories,
so that end-to-end tests and benchmarks can push and pull through any
registry at ``127.0.0.1:<port>`` without touching the machine's global state.

Rules every helper follows (see shared/reference/real-clients.md):

* **Proxy trap.**  Every client and daemon gets ``PROXY_TRAP_ENV``: a request
  that would leave loopback (e.g. a fallback to Docker Hub) goes to a proxy at
  127.0.0.1:9, which refuses at once, instead of reaching the internet.
* **No hard-coded registry.**  Every helper takes the registry host
  (``"127.0.0.1:5000"``) or a full reference as a parameter.
* **Errors carry stderr.**  A failing client command raises ``ClientError``
  with the command line, exit code, stdout and stderr.
* **No sleeps as synchronisation.**  Readiness is polled with ``wait_until``
  (condition + deadline).
* **Everything started is stopped by PID**, also on failure: classes are
  context managers, fixtures use ``yield`` + ``finally``, and an ``atexit``
  hook stops whatever is still running when the interpreter exits.

Use the fixtures either by importing them into a test module
(``from tests.realclients import dockerd, distribution_registry``) or, to share
one instance of each session fixture across modules, by listing this module
in ``pytest_plugins`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kraken.tools.ocigen import GeneratedImage

__all__ = [
    "PROXY_TRAP_ENV",
    "ClientError",
    "BackgroundProcess",
    "client_env",
    "run_client",
    "wait_until",
    "free_port",
    "pid_alive",
    "mounts_under",
    "sha256_bytes",
    "sha256_file",
    "http_request",
    "fetch_manifest",
    "fetch_blob",
    "Dockerd",
    "Skopeo",
    "skopeo_copy",
    "skopeo_inspect_raw",
    "skopeo_pull_dir",
    "with_private_blob_cache",
    "dir_blobs",
    "assert_dir_matches_image",
    "Containerd",
    "Ctr",
    "Podman",
    "OrasPushResult",
    "OrasAttachResult",
    "oras_push",
    "oras_pull",
    "oras_manifest",
    "oras_attach",
    "oras_discover",
    "DistributionRegistry",
    "dockerd",
    "containerd",
    "podman",
    "distribution_registry",
]

T = TypeVar("T")

TRAP_PROXY_URL = "http://127.0.0.1:9"
#: Loopback and the test hosts' subnets (network namespaces: 10.200 for the real-client tests,
#: 10.201 for the multi-host deployment, 10.202 for its Docker mode), which clients reach directly.
NO_PROXY_HOSTS = "127.0.0.1,localhost,10.200.0.0/24,10.201.0.0/24,10.202.0.0/24"
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
_TMP_PREFIX = "krk-rc-"

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


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    *,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    This is the only place that waits between attempts: the wait is bounded by
    a deadline and always ends as soon as the condition holds, which keeps
    tests both fast and robust (unlike a fixed sleep).  Exceptions raised by the
    predicate propagate.  Raises ``TimeoutError`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(min(interval, remaining))


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (bind to port 0, then release).

    There is an unavoidable race with other processes; servers started on it
    are retried with a new port by their helpers.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def sha256_bytes(data: bytes) -> str:
    """``sha256:<hex>`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` digest of a file, read in 4 MiB chunks (layers can be big)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


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


def _pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_pid(pid: int, timeout: float = 20.0) -> None:
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


def _pids_mentioning(marker: str) -> list[int]:
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


def _unmount_all_under(root: Path) -> None:
    """Unmount leftovers (dockerd's nsfs netns mounts, overlay mounts) before rm -rf."""
    for mp in mounts_under(root):
        r = subprocess.run(["umount", mp], capture_output=True, check=False)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def _remove_tree(root: Path) -> None:
    """Unmount then delete a private temp tree; never follow mounts out of it."""
    if not root.exists():
        return
    _unmount_all_under(root)
    shutil.rmtree(root, ignore_errors=True)


def _tail(path: Path, limit: int = 6000) -> str:
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

    def log(self) -> str:
        """Tail of the process log, for error messages."""
        return _tail(self.log_path)

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


def _wait_ready(
    process: BackgroundProcess, ready: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.05
) -> None:
    """``wait_until(ready)``, but a timeout error carries the server's log tail."""
    try:
        wait_until(ready, timeout, interval, message=what)
    except TimeoutError as exc:
        raise RuntimeError(f"{exc}\n--- log of {process.args[0]} ---\n{process.log()}") from exc


def _stop_all_live() -> None:
    """atexit safety net: stop processes whose owner never called stop()."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for p in live:
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            p.stop(timeout=10)


atexit.register(_stop_all_live)


def _mkdtemp(kind: str) -> Path:
    """Short private temp dir (unix socket paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{kind}-", dir="/tmp"))


def _require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (see scripts/install-system-deps.sh)")
    return path


def _normalize_tagged(name: str) -> str:
    """Add ``:latest`` to a reference without tag or digest (docker-archive needs a tag)."""
    last = name.rsplit("/", 1)[-1]
    if "@" in name or ":" in last:
        return name
    return name + ":latest"


# --------------------------------------------------------------------------
# plain HTTP access to a registry (no proxies, no client binaries)
# --------------------------------------------------------------------------

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def http_request(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 30.0,
) -> HttpResponse:
    """One HTTP request that never uses a proxy; non-2xx statuses are returned, not raised.

    Header names in the result are lower-cased.
    """
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}), data=data)
    try:
        with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
            return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return HttpResponse(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def fetch_manifest(host: str, repo: str, reference: str, *, accept: str = MANIFEST_ACCEPT) -> tuple[bytes, str, str]:
    """GET a manifest from ``http://host``; return (bytes, digest header, content type).

    Raises ``RuntimeError`` on a non-200 answer.  The digest is the
    ``Docker-Content-Digest`` header (or the computed sha256 if it is absent).
    """
    r = http_request(f"http://{host}/v2/{repo}/manifests/{reference}", headers={"Accept": accept})
    if r.status != 200:
        raise RuntimeError(f"GET manifest {host}/{repo}:{reference} -> {r.status}: {r.body[:500]!r}")
    digest = r.headers.get("docker-content-digest") or sha256_bytes(r.body)
    return r.body, digest, r.headers.get("content-type", "")


def fetch_blob(host: str, repo: str, digest: str) -> bytes:
    """GET a blob from ``http://host`` into memory (use for small test blobs only)."""
    r = http_request(f"http://{host}/v2/{repo}/blobs/{digest}", timeout=120)
    if r.status != 200:
        raise RuntimeError(f"GET blob {host}/{repo}@{digest} -> {r.status}: {r.body[:500]!r}")
    return r.body


# --------------------------------------------------------------------------
# distribution registry (baseline "central registry")
# --------------------------------------------------------------------------


class DistributionRegistry:
    """Debian's ``docker-registry`` (distribution 2.8) with a private config.

    Why: it is the reference implementation of the registry API, so it is the
    baseline for benchmarks and the sanity target for the client helpers.
    The packaged /etc/docker/registry/config.yml enables htpasswd auth and
    listens on all interfaces, so we always write our own config.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        port: int | None = None,
        bind_host: str = "127.0.0.1",
        relative_urls: bool = False,
        proxy_remote_url: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._own_root = root is None
        self.root = root if root is not None else _mkdtemp("registry")
        self.bind_host = bind_host
        self.port = port
        self.relative_urls = relative_urls
        self.proxy_remote_url = proxy_remote_url
        self.start_timeout = start_timeout
        self.process: BackgroundProcess | None = None

    @property
    def host(self) -> str:
        """``ip:port``, as used in image references."""
        if self.port is None:
            raise RuntimeError("registry not started")
        return f"{self.bind_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _config(self, port: int) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.data_dir}",
            "  delete:",
            "    enabled: true",
            "  cache:",
            "    blobdescriptor: inmemory",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {self.bind_host}:{port}",
            f"  relativeurls: {'true' if self.relative_urls else 'false'}",
            "health:",
            "  storagedriver:",
            "    enabled: false",
        ]
        if self.proxy_remote_url:
            lines += ["proxy:", f"  remoteurl: {self.proxy_remote_url}"]
        return "\n".join(lines) + "\n"

    def _ready(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise RuntimeError(f"docker-registry exited early:\n{self.process.log()}")
        try:
            return http_request(f"{self.url}/v2/", timeout=2).status == 200
        except OSError:
            return False

    def start(self) -> DistributionRegistry:
        """Start the registry and wait until ``GET /v2/`` answers 200.

        A port race (another process took the port) is retried with a new
        port, up to three times.
        """
        binary = _require_binary("docker-registry")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port
        last_error: Exception | None = None
        for _attempt in range(3):
            self.port = fixed_port or free_port(self.bind_host)
            cfg = self.root / "config.yml"
            cfg.write_text(self._config(self.port))
            self.process = BackgroundProcess([binary, "serve", cfg], log_path=self.log_path, env=client_env())
            try:
                _wait_ready(self.process, self._ready, self.start_timeout, f"docker-registry on {self.host}")
                return self
            except (RuntimeError, TimeoutError) as exc:
                last_error = exc
                self.process.stop()
                if fixed_port:
                    break
        raise RuntimeError(f"could not start docker-registry: {last_error}")

    def stop(self) -> None:
        """Stop by PID and remove the private directory (if we created it)."""
        try:
            if self.process is not None:
                self.process.stop()
        finally:
            if self._own_root:
                _remove_tree(self.root)

    def access_log(self) -> str:
        """Everything the registry logged (includes the Apache-style access log)."""
        return _tail(self.log_path, 10_000_000)

    def catalog(self) -> list[str]:
        r = http_request(f"{self.url}/v2/_catalog")
        return list(json.loads(r.body).get("repositories", []))

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        return fetch_manifest(self.host, repo, reference)

    def get_blob(self, repo: str, digest: str) -> bytes:
        return fetch_blob(self.host, repo, digest)

    def __enter__(self) -> DistributionRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# skopeo
# --------------------------------------------------------------------------

_SYSTEM_BLOB_CACHE_DIR = "/var/lib/containers/cache"
# Runs the command in a private mount namespace with a private directory bound
# over the system blob-info cache dir (see Skopeo's docstring for why).
_CACHE_WRAPPER = 'mkdir -p "$2" && mount --bind "$1" "$2" && shift 2 && exec "$@"'
_unshare_ok: bool | None = None


def _unshare_works() -> bool:
    """Whether we may create mount namespaces (root with CAP_SYS_ADMIN)."""
    global _unshare_ok
    if _unshare_ok is None:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            _unshare_ok = False
        else:
            r = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
            )
            _unshare_ok = r.returncode == 0
    return _unshare_ok


def with_private_blob_cache(cache_dir: Path, argv: Sequence[str]) -> list[str]:
    """Wrap ``argv`` so containers/image's blob-info cache lives in ``cache_dir``.

    skopeo 1.9 and podman 4.3 running as root always use
    ``/var/lib/containers/cache/blob-info-cache-v1.boltdb`` (no flag or
    environment variable moves it), and that cache makes later pushes try
    cross-repo mounts or skip uploads of blobs seen before, so sharing it makes
    tests depend on each other.  The wrapper runs the command under ``unshare
    --mount`` with ``cache_dir`` bind-mounted over that path; the mount exists
    only inside the command's private mount namespace and vanishes with it.
    The (empty) mount-point directory is created on the host if missing, as
    the clients themselves would.  Without root/unshare, ``argv`` is returned
    unchanged and the cache is shared.
    """
    if not _unshare_works():
        return list(argv)
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", _CACHE_WRAPPER, "sh", str(cache_dir), _SYSTEM_BLOB_CACHE_DIR, *argv,
    ]


class Skopeo:
    """skopeo with private registries.conf, policy, tmpdir and blob-info cache.

    The blob-info cache cannot be relocated by flag or environment in skopeo
    1.9 (``--blob-cache`` does not exist), so commands run through
    ``with_private_blob_cache``; ``cache_isolated`` says whether that was
    possible (it needs root and ``unshare``).

    An instance keeps one cache across its commands (useful to test mounts);
    the module-level ``skopeo_copy`` etc. use a fresh instance per call.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        insecure_registries: Sequence[str] = (),
        mirrors: Mapping[str, str] | None = None,
        isolate_blob_cache: bool = True,
    ) -> None:
        self.binary = _require_binary("skopeo")
        self._own_root = root is None
        self.root = root if root is not None else _mkdtemp("skopeo")
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache_dir = self.root / "blob-cache"
        self.tmp_dir = self.root / "tmp"
        self.cache_dir.mkdir(exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        self.registries_conf = self.root / "registries.conf"
        self.registries_conf.write_text(_registries_conf(insecure_registries, mirrors or {}))
        self.policy = self.root / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.cache_isolated = isolate_blob_cache and _unshare_works()

    def _argv(self, args: Sequence[str | os.PathLike[str]]) -> list[str]:
        base = [
            self.binary,
            "--registries-conf",
            str(self.registries_conf),
            "--policy",
            str(self.policy),
            "--tmpdir",
            str(self.tmp_dir),
            *[os.fspath(a) for a in args],
        ]
        return with_private_blob_cache(self.cache_dir, base) if self.cache_isolated else base

    def run(
        self, *args: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT, binary: bool = False
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``skopeo ARGS`` with the private config and the proxy trap."""
        env = client_env({"CONTAINERS_REGISTRIES_CONF": str(self.registries_conf), "TMPDIR": str(self.tmp_dir)})
        return run_client(self._argv(args), env=env, timeout=timeout, binary=binary)

    def copy(
        self,
        src: str,
        dst: str,
        *,
        tls_verify: bool = False,
        extra_args: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[Any]:
        """``skopeo copy SRC DST``; TLS verification off by default (plain-HTTP test registries)."""
        tv = "true" if tls_verify else "false"
        return self.run(
            "copy", f"--src-tls-verify={tv}", f"--dest-tls-verify={tv}", *extra_args, src, dst, timeout=timeout
        )

    def inspect_raw(self, ref: str, *, tls_verify: bool = False, config: bool = False) -> bytes:
        """Exact manifest bytes (or config bytes with ``config=True``) of ``ref``."""
        args = ["inspect", f"--tls-verify={'true' if tls_verify else 'false'}", "--raw"]
        if config:
            args.append("--config")
        return bytes(self.run(*args, ref, binary=True).stdout)

    def inspect(self, ref: str, *, tls_verify: bool = False) -> dict[str, Any]:
        """``skopeo inspect --no-tags`` as JSON (``--no-tags`` avoids listing tags upstream)."""
        out = self.run("inspect", f"--tls-verify={'true' if tls_verify else 'false'}", "--no-tags", ref).stdout
        return dict(json.loads(out))

    def list_tags(self, ref: str, *, tls_verify: bool = False) -> list[str]:
        out = self.run("list-tags", f"--tls-verify={'true' if tls_verify else 'false'}", ref).stdout
        return list(json.loads(out).get("Tags") or [])

    def close(self) -> None:
        if self._own_root:
            _remove_tree(self.root)

    def __enter__(self) -> Skopeo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _registries_conf(insecure: Sequence[str], mirrors: Mapping[str, str]) -> str:
    """registries.conf (v2) text: no unqualified search, given hosts insecure, optional mirrors.

    ``mirrors`` maps a prefix (e.g. ``docker.io``) to a mirror host
    (``127.0.0.1:5000``); mirrors are always marked insecure (plain HTTP).
    """
    lines = ["unqualified-search-registries = []", ""]
    for host in insecure:
        if host in mirrors:
            continue
        lines += ["[[registry]]", f'location = "{host}"', "insecure = true", ""]
    for prefix, mirror in mirrors.items():
        lines += [
            "[[registry]]",
            f'prefix = "{prefix}"',
            f'location = "{prefix}"',
            "[[registry.mirror]]",
            f'location = "{mirror}"',
            "insecure = true",
            "",
        ]
    return "\n".join(lines)


def skopeo_copy(
    src: str, dst: str, *, tls_verify: bool = False, extra_args: Sequence[str] = ()
) -> subprocess.CompletedProcess[Any]:
    """One-shot ``skopeo copy`` with its own fresh config and blob-info cache."""
    with Skopeo() as sk:
        return sk.copy(src, dst, tls_verify=tls_verify, extra_args=extra_args)


def skopeo_inspect_raw(ref: str, *, tls_verify: bool = False) -> bytes:
    """One-shot ``skopeo inspect --raw``: the exact manifest bytes served for ``ref``."""
    with Skopeo() as sk:
        return sk.inspect_raw(ref, tls_verify=tls_verify)


def skopeo_pull_dir(ref: str, dest: Path, *, tls_verify: bool = False) -> Path:
    """Copy ``ref`` (e.g. ``docker://host/repo:tag``) into a ``dir:`` layout at ``dest``.

    A ``dir:`` layout stores every blob under its hex digest plus the exact
    manifest, which is ideal for byte-level comparison.
    """
    skopeo_copy(ref, f"dir:{dest}", tls_verify=tls_verify)
    return dest


def dir_blobs(dir_path: Path) -> dict[str, Path]:
    """Blobs of a skopeo ``dir:`` layout, keyed by ``sha256:<hex>`` (from the file name)."""
    out = {}
    for p in dir_path.iterdir():
        if re.fullmatch(r"[0-9a-f]{64}", p.name):
            out["sha256:" + p.name] = p
    return out


def assert_dir_matches_image(dir_path: Path, image: GeneratedImage) -> None:
    """Assert a ``dir:`` copy holds exactly the generated manifest and blobs, byte for byte.

    Checks the manifest bytes (hence the manifest digest), that every blob the
    image references is present, and that each file's sha256 equals its name.
    """
    manifest = (dir_path / "manifest.json").read_bytes()
    assert sha256_bytes(manifest) == image.manifest_digest, "manifest digest differs"
    assert manifest == image.manifest, "manifest bytes differ"
    blobs = dir_blobs(dir_path)
    assert set(blobs) == set(image.blob_digests), f"blob set differs: {sorted(blobs)} vs {image.blob_digests}"
    for digest, path in blobs.items():
        assert sha256_file(path) == digest, f"content of {path} does not match its digest"
        assert path.read_bytes() == image.blob_path(digest).read_bytes(), f"blob {digest} differs from generated"


# --------------------------------------------------------------------------
# dockerd
# --------------------------------------------------------------------------


class Dockerd:
    """A dockerd started by hand in a private temp dir (no systemd needed).

    Why by hand: tests need a daemon whose ``registry-mirrors`` and
    ``insecure-registries`` point at a registry chosen at run time, and which
    leaves nothing behind.  It runs with ``iptables: false`` and ``bridge:
    none`` so the host's network configuration is never touched; containers
    can use ``--network host`` or ``none``.  dockerd starts its own containerd
    under the exec-root.

    ``storage_driver=None`` tries overlay2 first and falls back to vfs if the
    daemon does not come up with it.  ``netns`` (a name under /run/netns)
    starts the daemon inside that network namespace via ``nsenter --net``
    (``ip netns exec`` would hide the cgroup mounts dockerd needs).
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        insecure_registries: Sequence[str] = (),
        registry_mirrors: Sequence[str] = (),
        storage_driver: str | None = None,
        netns: str | None = None,
        extra_config: Mapping[str, Any] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.dockerd_binary = _require_binary("dockerd")
        self.docker_binary = _require_binary("docker")
        self._own_root = root is None
        self.root = root if root is not None else _mkdtemp("dockerd")
        self.insecure_registries = list(insecure_registries)
        self.registry_mirrors = list(registry_mirrors)
        self.storage_driver = storage_driver
        self.netns = netns
        self.extra_config = dict(extra_config or {})
        self.start_timeout = start_timeout
        self.process: BackgroundProcess | None = None
        self.active_storage_driver: str | None = None
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.socket_path = self.root / "docker.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.docker_config_dir = self.root / "cli-config"
        self.tmp_dir = self.root / "tmp"

    @property
    def host(self) -> str:
        """Value for ``docker -H`` / ``DOCKER_HOST``."""
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def containerd_socket(self) -> Path:
        """dockerd's own containerd (usable with ``Ctr``, namespace ``moby``)."""
        return self.exec_root / "containerd" / "containerd.sock"

    def _write_config(self, driver: str) -> Path:
        cfg: dict[str, Any] = {
            "storage-driver": driver,
            "data-root": str(self.data_root),
            "exec-root": str(self.exec_root),
            "pidfile": str(self.pidfile),
            "hosts": [self.host],
            "iptables": False,
            "ip-masq": False,
            "bridge": "none",
            "registry-mirrors": self.registry_mirrors,
            "insecure-registries": self.insecure_registries,
            # dockerd 20.10 otherwise writes its libtrust key to /etc/docker/key.json.
            "deprecated-key-path": str(self.root / "key.json"),
        }
        cfg.update(self.extra_config)
        path = self.root / "daemon.json"
        path.write_text(json.dumps(cfg, indent=2))
        return path

    def _env(self) -> dict[str, str]:
        return client_env({"DOCKER_CONFIG": str(self.docker_config_dir), "TMPDIR": str(self.tmp_dir)})

    def _ready(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise RuntimeError(f"dockerd exited early (code {self.process.proc.returncode}):\n{self.process.log()}")
        if not self.socket_path.exists():
            return False
        r = run_client(
            [self.docker_binary, "-H", self.host, "info", "--format", "{{.Driver}}"],
            env=self._env(),
            timeout=10,
            check=False,
        )
        if r.returncode == 0 and r.stdout.strip():
            self.active_storage_driver = r.stdout.strip()
            return True
        return False

    def _start_with(self, driver: str) -> None:
        for d in (self.data_root, self.exec_root, self.docker_config_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        cfg = self._write_config(driver)
        argv: list[str] = [self.dockerd_binary, f"--config-file={cfg}"]
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        self.process = BackgroundProcess(argv, log_path=self.log_path, env=self._env())
        _wait_ready(self.process, self._ready, self.start_timeout, f"dockerd at {self.host}", interval=0.1)

    def start(self) -> Dockerd:
        """Start the daemon and wait until ``docker info`` answers."""
        drivers = [self.storage_driver] if self.storage_driver else ["overlay2", "vfs"]
        errors = []
        for driver in drivers:
            try:
                self._start_with(driver)
                return self
            except (RuntimeError, TimeoutError) as exc:
                errors.append(f"[{driver}] {exc}")
                self._stop_daemon()
                # A failed overlay2 attempt may leave a half-initialised data-root behind.
                _remove_tree(self.data_root)
                _remove_tree(self.exec_root)
        self.stop()
        raise RuntimeError("could not start dockerd:\n" + "\n".join(errors))

    def run(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon; raise ``ClientError`` (with stderr) on failure."""
        return run_client(
            [self.docker_binary, "-H", self.host, *args], env=self._env(), timeout=timeout, check=check, input=input
        )

    def pull(self, ref: str) -> None:
        self.run("pull", "-q", ref)

    def push(self, ref: str) -> str:
        """Push ``ref``; return the manifest digest docker reports."""
        out = self.run("push", ref).stdout
        m = re.search(r"digest: (sha256:[0-9a-f]{64})", out)
        if not m:
            raise RuntimeError(f"no digest in docker push output:\n{out}")
        return m.group(1)

    def tag(self, src: str, dst: str) -> None:
        self.run("tag", src, dst)

    def rmi(self, *refs: str, force: bool = True) -> None:
        self.run("rmi", *(["-f"] if force else []), *refs)

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return dict(json.loads(self.run("image", "inspect", ref).stdout)[0])

    def image_id(self, ref: str) -> str:
        """Image ID, which equals the config digest."""
        return str(self.inspect_image(ref)["Id"])

    def repo_digests(self, ref: str) -> list[str]:
        """``repo@sha256:<manifest digest>`` entries recorded by pulls/pushes."""
        return list(self.inspect_image(ref).get("RepoDigests") or [])

    def has_image(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def load_oci(self, image: GeneratedImage, name: str) -> str:
        """Load a generated OCI image into the daemon as ``name``; return the image ID.

        dockerd 20.10 cannot load an OCI layout, so skopeo converts it to a
        docker-archive first (layer blobs are kept as they are).
        """
        name = _normalize_tagged(name)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".tar", dir=self.tmp_dir)
        os.close(fd)
        os.unlink(tmp)  # skopeo refuses to overwrite an existing archive
        try:
            skopeo_copy(image.oci_ref, f"docker-archive:{tmp}:{name}")
            self.run("load", "-q", "-i", tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return self.image_id(name)

    def _stop_daemon(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30)
        # dockerd normally stops its containerd (and shims); anything that still
        # refers to our private root is ours and is stopped by PID.
        for pid in _pids_mentioning(str(self.root)):
            _kill_pid(pid)

    def stop(self) -> None:
        """Stop dockerd by PID, stop leftovers, unmount nsfs/overlay leftovers, remove dirs."""
        try:
            self._stop_daemon()
        finally:
            _unmount_all_under(self.root)
            if self._own_root:
                _remove_tree(self.root)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# containerd + ctr
# --------------------------------------------------------------------------


class Containerd:
    """A standalone containerd in a private temp dir, driven with ``ctr``.

    Why standalone (not dockerd's): its registry host configuration
    (``hosts.toml`` under ``hosts_dir``) is ours to write, e.g. to point the
    Docker Hub namespace at a mirror.  The CRI plugin is disabled because ctr
    does not need it and it would otherwise try to set up CNI networking.
    """

    def __init__(self, root: Path | None = None, *, start_timeout: float = 30.0) -> None:
        self.binary = _require_binary("containerd")
        self.ctr_binary = _require_binary("ctr")
        self._own_root = root is None
        self.root = root if root is not None else _mkdtemp("containerd")
        self.start_timeout = start_timeout
        self.process: BackgroundProcess | None = None
        self.address = self.root / "containerd.sock"
        self.hosts_dir = self.root / "certs.d"

    @property
    def log_path(self) -> Path:
        return self.root / "containerd.log"

    def _config(self) -> str:
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.root / "root"}"',
                f'state = "{self.root / "state"}"',
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                "[grpc]",
                f'  address = "{self.address}"',
                "[ttrpc]",
                f'  address = "{self.address}.ttrpc"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{self.root / "opt"}"',
                '[plugins."io.containerd.grpc.v1.cri".registry]',
                f'  config_path = "{self.hosts_dir}"',
                "",
            ]
        )

    def _ready(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise RuntimeError(f"containerd exited early:\n{self.process.log()}")
        if not self.address.exists():
            return False
        r = run_client([self.ctr_binary, "--address", self.address, "version"], timeout=10, check=False)
        return r.returncode == 0

    def start(self) -> Containerd:
        """Start containerd and wait until ``ctr version`` reaches the server."""
        for d in ("root", "state", "opt"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "config.toml"
        cfg.write_text(self._config())
        self.process = BackgroundProcess([self.binary, "--config", cfg], log_path=self.log_path, env=client_env())
        try:
            _wait_ready(self.process, self._ready, self.start_timeout, f"containerd at {self.address}")
        except BaseException:
            self.stop()
            raise
        return self

    def set_mirror(
        self,
        mirror_url: str,
        *,
        namespace_host: str = "docker.io",
        server: str = "https://registry-1.docker.io",
        capabilities: Sequence[str] = ("pull", "resolve"),
    ) -> Path:
        """Write ``hosts.toml`` so pulls of ``namespace_host/...`` go to ``mirror_url`` first.

        Only used by ``ctr`` when ``--hosts-dir`` is given (``Ctr.pull(...,
        use_hosts_dir=True)``).  containerd adds ``?ns=<namespace_host>`` to
        mirror requests.
        """
        d = self.hosts_dir / namespace_host
        d.mkdir(parents=True, exist_ok=True)
        caps = ", ".join(f'"{c}"' for c in capabilities)
        path = d / "hosts.toml"
        path.write_text(f'server = "{server}"\n[host."{mirror_url}"]\n  capabilities = [{caps}]\n')
        return path

    def ctr(self, namespace: str = "kraken-test") -> Ctr:
        """A ``Ctr`` client bound to this daemon."""
        return Ctr(self.address, namespace=namespace, hosts_dir=self.hosts_dir)

    def stop(self) -> None:
        """Stop by PID (plus any shim mentioning our root), unmount, remove the temp dir."""
        try:
            if self.process is not None:
                self.process.stop(timeout=30)
            for pid in _pids_mentioning(str(self.root)):
                _kill_pid(pid)
        finally:
            _unmount_all_under(self.root)
            if self._own_root:
                _remove_tree(self.root)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Ctr:
    """The ``ctr`` CLI bound to one containerd socket and namespace."""

    def __init__(
        self, address: str | os.PathLike[str], *, namespace: str = "kraken-test", hosts_dir: Path | None = None
    ) -> None:
        self.binary = _require_binary("ctr")
        self.address = os.fspath(address)
        self.namespace = namespace
        self.hosts_dir = hosts_dir

    def run(
        self, *args: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT, binary: bool = False
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``ctr ARGS`` against this socket/namespace, with the proxy trap."""
        argv = [self.binary, "--address", self.address, "--namespace", self.namespace, *args]
        return run_client(argv, timeout=timeout, binary=binary)

    def pull(self, ref: str, *, plain_http: bool = True, use_hosts_dir: bool = False, unpack: bool = True) -> str:
        """Pull ``ref``; return the manifest digest now recorded for it.

        ``unpack=True`` is ``ctr images pull`` (fetch + unpack into the
        overlayfs snapshotter, what a node does before running); ``unpack=False``
        is ``ctr content fetch`` (content store only: cheaper when a test only
        cares about the registry side).
        """
        args: list[str] = ["images", "pull"] if unpack else ["content", "fetch"]
        if plain_http:
            args.append("--plain-http")
        if use_hosts_dir:
            if self.hosts_dir is None:
                raise ValueError("no hosts_dir configured")
            args += ["--hosts-dir", str(self.hosts_dir)]
        self.run(*args, ref)
        return self.image_digest(ref)

    def push(self, ref: str, *, plain_http: bool = True, local: str | None = None) -> None:
        """``ctr images push REF [LOCAL]`` (LOCAL defaults to REF)."""
        args: list[str] = ["images", "push"]
        if plain_http:
            args.append("--plain-http")
        args.append(ref)
        if local:
            args.append(local)
        self.run(*args)

    def tag(self, src: str, dst: str) -> None:
        self.run("images", "tag", "--force", src, dst)

    def rmi(self, *refs: str) -> None:
        self.run("images", "rm", *refs)

    def images(self) -> dict[str, str]:
        """Map of image name -> manifest (or index) digest."""
        out = self.run("images", "ls").stdout.splitlines()
        result = {}
        for line in out[1:]:
            cols = line.split()
            if len(cols) >= 3 and cols[2].startswith("sha256:"):
                result[cols[0]] = cols[2]
        return result

    def image_digest(self, ref: str) -> str:
        """Manifest digest of ``ref`` as containerd recorded it."""
        images = self.images()
        for name in (ref, _normalize_tagged(ref)):
            if name in images:
                return images[name]
        raise KeyError(f"{ref} not in containerd namespace {self.namespace}: {sorted(images)}")

    def content_get(self, digest: str) -> bytes:
        """Raw bytes of a blob in the content store."""
        return bytes(self.run("content", "get", digest, binary=True).stdout)

    def import_oci(self, image: GeneratedImage, ref: str) -> str:
        """Import a generated image as ``ref`` (exact bytes, no conversion); return its digest.

        Builds an OCI archive straight from the layout (so the manifest and
        blobs are byte-identical) with ``ref`` as the ref name, then
        ``ctr images import --no-unpack``.
        """
        ref = _normalize_tagged(ref)
        with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX + "ctr-import-") as td:
            archive = Path(td) / "image.tar"
            _write_oci_archive(image, ref, archive)
            self.run("images", "import", "--no-unpack", archive)
        return self.image_digest(ref)


def _write_oci_archive(image: GeneratedImage, ref_name: str, archive: Path) -> None:
    """Tar up one image of a layout (manifest, config, layers) with ``ref_name`` in index.json."""
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": image.manifest_digest,
                "size": len(image.manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }
        ],
    }
    index_bytes = json.dumps(index).encode()
    layout_bytes = b'{"imageLayoutVersion":"1.0.0"}'
    with tarfile.open(archive, "w") as tar:
        for name, data in (("oci-layout", layout_bytes), ("index.json", index_bytes)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for digest in [image.manifest_digest, *image.blob_digests]:
            tar.add(image.blob_path(digest), arcname=f"blobs/sha256/{digest.split(':', 1)[1]}")


# --------------------------------------------------------------------------
# podman
# --------------------------------------------------------------------------


class Podman:
    """podman with private containers.conf / storage.conf / registries.conf.

    Why private configs: podman's defaults write to /var/lib/containers,
    /run/containers and /run/libpod, and ``podman run`` on its default bridge
    changes the host's iptables and ip_forward.  Here storage (vfs by
    default: no mount helpers needed), runtime dirs, the event log and the
    network config live in a temp dir, containers default to the host network,
    and ulimits are set to values allowed without CAP_SYS_RESOURCE.

    podman 4.3 as root keeps its blob-info cache in the system location, not
    under the graph root, so image-transfer commands (``pull``, ``push``,
    ``image pull/push``) run through ``with_private_blob_cache`` with a cache
    private to this instance.  Other commands (``run``, ``rm`` ...) are not
    wrapped: their mounts must stay visible to later podman invocations.
    """

    _TRANSFER_COMMANDS = frozenset({"pull", "push"})

    def __init__(
        self,
        root: Path | None = None,
        *,
        insecure_registries: Sequence[str] = (),
        mirrors: Mapping[str, str] | None = None,
        storage_driver: str = "vfs",
    ) -> None:
        self.binary = _require_binary("podman")
        self._own_root = root is None
        self.root = root if root is not None else _mkdtemp("podman")
        self.storage_driver = storage_driver
        for d in ("graph", "run", "tmp", "libpod-tmp", "networks", "volumes", "blob-cache"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.containers_conf = self.root / "containers.conf"
        self.storage_conf = self.root / "storage.conf"
        self.registries_conf = self.root / "registries.conf"
        self.policy = self.root / "policy.json"
        self._write_configs(insecure_registries, mirrors or {})

    def _write_configs(self, insecure: Sequence[str], mirrors: Mapping[str, str]) -> None:
        r = self.root
        self.containers_conf.write_text(
            "\n".join(
                [
                    "[containers]",
                    'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]',
                    'netns = "host"',
                    "[engine]",
                    'cgroup_manager = "cgroupfs"',
                    'events_logger = "file"',
                    f'events_logfile_path = "{r / "events.log"}"',
                    f'tmp_dir = "{r / "libpod-tmp"}"',
                    f'volume_path = "{r / "volumes"}"',
                    f'image_copy_tmp_dir = "{r / "tmp"}"',
                    "[network]",
                    f'network_config_dir = "{r / "networks"}"',
                    "",
                ]
            )
        )
        self.storage_conf.write_text(
            "\n".join(
                [
                    "[storage]",
                    f'driver = "{self.storage_driver}"',
                    f'runroot = "{r / "run"}"',
                    f'graphroot = "{r / "graph"}"',
                    "",
                ]
            )
        )
        self.registries_conf.write_text(_registries_conf(insecure, mirrors))
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))

    def _env(self) -> dict[str, str]:
        return client_env(
            {
                "CONTAINERS_CONF": str(self.containers_conf),
                "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
                "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
                "TMPDIR": str(self.root / "tmp"),
            }
        )

    def run(
        self, *args: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS`` with the private configuration and the proxy trap."""
        argv = [self.binary, *[os.fspath(a) for a in args]]
        words = [os.fspath(a) for a in args[:2]]
        if words and words[0] == "image":
            words = words[1:]
        if words and words[0] in self._TRANSFER_COMMANDS:
            argv = with_private_blob_cache(self.root / "blob-cache", argv)
        return run_client(argv, env=self._env(), timeout=timeout, check=check)

    def pull(self, ref: str, *, tls_verify: bool = False) -> str:
        """Pull ``ref``; return the image ID podman prints."""
        out = self.run(
            "pull", "--quiet", f"--tls-verify={'true' if tls_verify else 'false'}",
            f"--signature-policy={self.policy}", ref,
        ).stdout
        return out.strip().splitlines()[-1]

    def push(self, ref: str, dest: str | None = None, *, tls_verify: bool = False) -> str:
        """Push ``ref`` (to ``dest`` if given); return the pushed manifest digest."""
        digestfile = self.root / "tmp" / f"digest-{os.getpid()}-{time.monotonic_ns()}"
        args = [
            "push", "--quiet", f"--tls-verify={'true' if tls_verify else 'false'}",
            f"--signature-policy={self.policy}", f"--digestfile={digestfile}", ref,
        ]
        if dest:
            args.append(dest)
        self.run(*args)
        try:
            return digestfile.read_text().strip()
        finally:
            digestfile.unlink(missing_ok=True)

    def tag(self, src: str, dst: str) -> None:
        self.run("tag", src, dst)

    def rmi(self, *refs: str, force: bool = True) -> None:
        self.run("rmi", *(["--force"] if force else []), *refs)

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return dict(json.loads(self.run("image", "inspect", ref).stdout)[0])

    def image_digest(self, ref: str) -> str:
        """Manifest digest podman recorded for ``ref``'s repository.

        ``Digest`` alone is the digest of whichever manifest first brought the image in, which
        differs when the same image was pulled or pushed under another manifest before.
        """
        info = self.inspect_image(ref)
        repo = _normalize_tagged(ref).rsplit(":", 1)[0]
        matching = [d.partition("@")[2] for d in info.get("RepoDigests") or [] if d.partition("@")[0] == repo]
        if len(matching) == 1:
            return matching[0]
        return str(info["Digest"])

    def load_oci(self, image: GeneratedImage, name: str) -> str:
        """Copy a generated OCI layout into podman's storage as ``name``; return the image ID."""
        image_id = self.pull(image.oci_ref)
        self.tag(image_id, _normalize_tagged(name))
        return image_id

    def close(self) -> None:
        """Remove the private tree (podman has no daemon; pull/push leave no processes)."""
        if self._own_root:
            _remove_tree(self.root)

    def __enter__(self) -> Podman:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# oras (Python SDK, run in a subprocess)
# --------------------------------------------------------------------------

# The SDK runs in a child interpreter so that it gets the proxy-trap
# environment like every other client, its stderr can be attached to errors,
# and requests' global state cannot leak into the test process.
_ORAS_SCRIPT = r"""
import json, sys
import oras.client
op, args = sys.argv[1], json.loads(sys.argv[2])
client = oras.client.OrasClient(hostname=args["host"], insecure=True)
if op == "push":
    r = client.push(target=args["target"], files=args["files"], disable_path_validation=True, quiet=True)
    result = {"status": r.status_code, "digest": r.headers.get("Docker-Content-Digest")}
elif op == "pull":
    result = {"files": client.pull(target=args["target"], outdir=args["outdir"])}
elif op == "manifest":
    result = client.get_manifest(args["target"])
elif op == "attach":
    import oras.oci
    s = args["subject"]
    r = client.push(target=args["target"], files=args["files"], disable_path_validation=True, quiet=True,
                    manifest_config=args["config"], manifest_annotations=args["annotations"],
                    subject=oras.oci.Subject(s["mediaType"], s["digest"], s["size"]))
    result = {"status": r.status_code, "digest": r.headers.get("Docker-Content-Digest"),
              "subject": r.headers.get("OCI-Subject")}
elif op == "discover":
    r = client.do_request(args["url"], "GET", headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    result = {"status": r.status_code, "headers": dict(r.headers), "index": r.json()}
else:
    raise SystemExit("unknown op " + op)
sys.stdout.write("\n@@ORAS-RESULT@@" + json.dumps(result) + "\n")
"""


@dataclass
class OrasPushResult:
    status: int
    manifest_digest: str | None


def _oras_target(host: str, target: str) -> str:
    return target if target.startswith(host + "/") else f"{host}/{target}"


def _oras(op: str, args: dict[str, Any], timeout: float) -> Any:
    proc = run_client([sys.executable, "-c", _ORAS_SCRIPT, op, json.dumps(args)], timeout=timeout)
    marker = "@@ORAS-RESULT@@"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(marker):
            return json.loads(line[len(marker) :])
    raise ClientError(proc.args, proc.returncode, proc.stdout, proc.stderr + "\n(no result line from oras)")


def oras_push(
    host: str, target: str, files: Sequence[str | os.PathLike[str]], *, timeout: float = DEFAULT_TIMEOUT
) -> OrasPushResult:
    """Push ``files`` as an OCI artifact to ``host``/``target`` (``repo:tag``) over plain HTTP.

    Layer titles are the files' base names, which is what ``oras_pull``
    recreates.
    """
    res = _oras(
        "push",
        {"host": host, "target": _oras_target(host, target), "files": [os.path.abspath(f) for f in files]},
        timeout,
    )
    return OrasPushResult(status=int(res["status"]), manifest_digest=res.get("digest"))


def oras_pull(
    host: str, target: str, outdir: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT
) -> list[Path]:
    """Pull an artifact into ``outdir``; return the files written."""
    Path(outdir).mkdir(parents=True, exist_ok=True)
    res = _oras("pull", {"host": host, "target": _oras_target(host, target), "outdir": os.fspath(outdir)}, timeout)
    return [Path(f) for f in res["files"]]


def oras_manifest(host: str, target: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """The artifact's manifest as oras sees it."""
    return dict(_oras("manifest", {"host": host, "target": _oras_target(host, target)}, timeout))


@dataclass
class OrasAttachResult:
    status: int
    manifest_digest: str | None
    subject_header: str | None


def oras_attach(
    host: str, target: str, files: Sequence[str | os.PathLike[str]], *, subject: Mapping[str, Any],
    artifact_type: str, annotations: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT,
) -> OrasAttachResult:
    """``oras attach`` as far as the SDK goes: push ``files`` as an artifact whose manifest has
    ``subject`` (a descriptor: mediaType, digest, size) and an empty config of media type
    ``artifact_type`` (what referrers list as its artifactType). Unlike the CLI, the SDK needs a
    tag in ``target`` and cannot set the manifest's own ``artifactType`` field."""
    res = _oras("attach", {
        "host": host, "target": _oras_target(host, target), "files": [os.path.abspath(f) for f in files],
        "subject": dict(subject), "config": f"/nonexistent-oras-config:{artifact_type}",
        "annotations": dict(annotations),
    }, timeout)
    return OrasAttachResult(int(res["status"]), res.get("digest"), res.get("subject"))


def oras_discover(host: str, repo: str, subject: str, artifact_type: str | None = None,
                  *, timeout: float = 60.0) -> dict[str, Any]:
    """``oras discover``'s request, sent through the SDK's HTTP session (the SDK has no
    discover): ``GET /v2/<repo>/referrers/<subject>[?artifactType=]`` accepting an OCI index.
    Returns ``{"status", "headers", "index"}``."""
    url = f"http://{host}/v2/{repo}/referrers/{subject}"
    if artifact_type is not None:
        url += "?artifactType=" + urllib.parse.quote(artifact_type, safe="")
    return dict(_oras("discover", {"host": host, "url": url}, timeout))


# --------------------------------------------------------------------------
# pytest fixtures
# --------------------------------------------------------------------------


def _skip_unless(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (run scripts/install-system-deps.sh)")


@pytest.fixture(scope="session")
def distribution_registry() -> Iterator[DistributionRegistry]:
    """A fresh distribution registry on 127.0.0.1:<free port> for the session."""
    _skip_unless("docker-registry")
    reg = DistributionRegistry()
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """One dockerd for the session (127.0.0.0/8 and 10.200.0.0/24 are insecure).

    Skips only when the dockerd binary is absent; a daemon that fails to start
    is an error.  Tests that need ``registry-mirrors`` start their own
    ``Dockerd`` because mirrors are fixed at daemon start.
    """
    _skip_unless("dockerd")
    d = Dockerd(insecure_registries=["10.200.0.0/24"])
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    """A standalone containerd for the session (use ``containerd.ctr()`` for a client)."""
    _skip_unless("containerd")
    _skip_unless("ctr")
    c = Containerd()
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    """A podman with private storage and blob-info cache for the session (TLS verification off by default)."""
    _skip_unless("podman")
    p = Podman()
    try:
        yield p
    finally:
        p.close()
