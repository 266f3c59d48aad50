"""``--secrets FILE``: credentials merged into a component's config at start, never printed.

A secret must not reach a log line (at DEBUG too) or an error message, whatever the mistake
in the secrets file: a value of the wrong type, an unknown backend kind, a misplaced key,
broken YAML.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from kraken.backend import BACKENDS
from kraken.cli import main
from kraken.devcluster import free_port
from tests.support.waiting import wait_healthy

SECRET = "Sup3r-S3cret-Value-0042"
ROOT = Path(__file__).resolve().parents[2]


def build_index_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "build-index.yaml"
    path.write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {"root": str(tmp_path / "store")},
        "origins": {"hosts": ["127.0.0.1:1"], "max_replica": 1},
        "backends": [{"namespace": ".*", "backend": {"file": {"root": str(tmp_path / "backend"),
                                                               "name_path": "docker_tag"}}}],
    }))
    return path


def write_secrets(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secrets.yaml"
    path.write_text(text)
    return path


async def test_a_component_started_with_a_secret_never_logs_it(tmp_path: Path) -> None:
    port = free_port()
    config = build_index_config(tmp_path, port)
    secrets = write_secrets(tmp_path, f"auth:\n  file:\n    default:\n      token: {SECRET}\n")
    log_path = tmp_path / "build-index.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kraken", "build-index", "--config", str(config), "--secrets", str(secrets),
             "--log-level", "DEBUG"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            await wait_healthy(f"http://127.0.0.1:{port}/health", 30, interval=0.1,
                               alive=lambda: None if proc.poll() is None else "build-index exited")
            # A request that reaches the backend.
            async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/tags/library/x:1"
            ) as resp:
                assert resp.status == 404
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    output = log_path.read_text()
    assert "backend configured" in output  # the log was captured
    assert SECRET not in output


@pytest.mark.parametrize("component, secrets, message", [
    ("build-index", f"listen: {{port: {SECRET}}}\n", "secrets.yaml: listen.port: expected int, got str <redacted>"),
    ("build-index", f"cache_ttl: {SECRET}\n", "secrets.yaml: cache_ttl: <redacted>"),
    ("build-index", f"auth: {{nosuch: {{default: {{token: {SECRET}}}}}}}\n",
     f"auth.nosuch: unknown backend 'nosuch' (registered: {', '.join(BACKENDS.names())})"),
    ("build-index", f"auth: {{file: {{default: {{token: [{SECRET}]}}}}}}\n",
     "auth.file.default.token: expected a string (a secret, not shown), got list"),
    ("build-index", f"auth: {{file: {{default: {SECRET}}}}}\n", "auth.file.default: expected a mapping, got str"),
    ("build-index", f"backends: [{{namespace: '({SECRET}', backend: {{file: {{root: /x}}}}}}]\n",
     "secrets.yaml: backends[0]: invalid value (<redacted>)"),
    ("build-index", f"backends: [{{namespace: x, backend: {{file: {{root: /x, name_path: {SECRET}}}}}}}]\n",
     "backends[0].backend.file.name_path: expected one of"),
    ("build-index", f'auth: {{file: {{default: {{token: "{SECRET}\n', "secrets.yaml: invalid YAML at line"),
    ("build-index", f"auth: {{file: {{default: {{token: *{SECRET}}}}}}}\n", "secrets.yaml: invalid YAML at line"),
    ("tracker", f"auth: {{file: {{default: {{token: {SECRET}}}}}}}\n", "auth: unknown key"),
])
def test_config_errors_never_show_a_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], component: str, secrets: str, message: str,
) -> None:
    if component == "build-index":
        config = build_index_config(tmp_path, free_port())
    else:
        config = ROOT / "config" / component / "development.yaml"
    secrets_path = write_secrets(tmp_path, secrets)
    assert main([component, "--config", str(config), "--secrets", str(secrets_path)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert SECRET not in err
