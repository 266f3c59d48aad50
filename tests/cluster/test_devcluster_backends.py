"""``python -m kraken.devcluster start --config-dir DIR --config-name NAME`` runs the chosen
config's backends: an origin configured with a ``file`` backend writes pushed blobs into that
directory (the devcluster rewrites only ports, directories and testfs addresses).

Started through kraken.devcluster: run under the shared lock (``flock /work/wt/devcluster.lock``)."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import yaml

from kraken.devcluster import REPO_ROOT, http_ok
from kraken.http.client import create_client
from kraken.http.config import HttpClientConfig
from kraken.origin.client import OriginClient
from tests.support.devcluster import READY_TIMEOUT, Devcluster, params_with_free_ports
from tests.support.origin import NS, backend_path, random_blob
from tests.support.waiting import wait_until


def test_a_file_backend_of_the_chosen_config_receives_pushed_blobs(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", config)
    blobs = tmp_path / "blobs"
    origin_yaml = config / "origin" / "filestore.yaml"
    origin_yaml.write_text(yaml.safe_dump({"extends": "development.yaml", "backends": [{
        "namespace": ".*", "must_ready": True,
        "backend": {"file": {"root": str(blobs), "name_path": "sharded_docker_blob"}}}]}))
    for component in ("testfs", "tracker", "build-index", "proxy", "agent"):
        (config / component / "filestore.yaml").write_text(yaml.safe_dump({"extends": "development.yaml"}))
    params, moved = params_with_free_ports(tmp_path)
    dc = Devcluster(tmp_path / "dc", "--config-dir", str(config), "--config-name", "filestore",
                    "--herd-params", str(params / "herd_param.sh"))
    try:
        dc.wait_for_line("ready:", READY_TIMEOUT)
        origin = f"127.0.0.1:{moved[15002]}"
        data, digest = random_blob(300_000)

        async def push() -> None:
            http = create_client(HttpClientConfig(connect_timeout=2, read_timeout=10))
            try:
                await OriginClient(origin, http, poll_timeout=10).upload_bytes(NS, digest, data)
            finally:
                await http.close()

        asyncio.run(push())
        landed = blobs / backend_path(digest)
        wait_until(landed.exists, 20.0, message=f"{landed} written back")
        assert landed.read_bytes() == data
        assert not list((tmp_path / "dc" / "testfs").rglob("data")), "the blob went to testfs"
        assert http_ok(f"http://{origin}/readiness")  # its must_ready file backend answers
    finally:
        dc.cleanup()
