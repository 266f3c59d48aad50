"""The recipes of examples/backends/s3 and examples/backends/gcs, as their READMEs give them:
the local store on the port the example names (moto_server on 9000, fake-gcs-server on 4443),
the example's bucket, then ``python -m kraken.devcluster start --config-dir
examples/backends/<x> --config-name <x>`` with the example's files unchanged (only the
devcluster's own ports moved to free ones). An image pushed through the proxy lands in the
bucket in the Docker-distribution layout and is pulled back through agent-one.

Started through kraken.devcluster, and on the examples' fixed store ports: run under the shared
lock (``flock /work/wt/devcluster.lock``)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kraken.core.digest import Digest
from kraken.devcluster import REPO_ROOT
from tests.support.devcluster import READY_TIMEOUT, Devcluster, params_with_free_ports
from tests.support.gcs import fake_gcs_server
from tests.support.moto import moto_on_port
from tests.support.origin import MB
from tests.support.registry_http import fetch_blob, fetch_manifest, push_blob_bytes, push_manifest
from tests.support.waiting import wait_until

EXAMPLES = REPO_ROOT / "examples" / "backends"
LAYOUT = "docker/registry/v2"


@contextmanager
def s3_store(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Callable[[], set[str]]]]:
    """moto on 9000 with the bucket ``kraken-registry``; credentials for the devcluster's
    origin and build-index from the environment (boto3's chain: the devcluster takes no
    secrets file; moto accepts any key)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "devcluster")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "devcluster")
    server = moto_on_port(workdir, 9000)
    try:
        server.client().create_bucket(Bucket="kraken-registry")
        yield "", lambda: set(server.keys("kraken-registry"))
    finally:
        server.stop()


@contextmanager
def gcs_store(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Callable[[], set[str]]]]:
    """fake-gcs-server on 4443 with the bucket ``kraken-example`` (anonymous, as configured)."""
    with fake_gcs_server(workdir, port=4443) as server:
        server.create_bucket("kraken-example")
        yield "kraken/", lambda: set(server.objects("kraken-example"))


STORES = {"s3": s3_store, "gcs": gcs_store}


@pytest.mark.parametrize("example", sorted(STORES))
def test_an_example_runs_in_the_devcluster_against_its_store(
    example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    params, moved = params_with_free_ports(tmp_path)
    with STORES[example](tmp_path / "store", monkeypatch) as (root, keys):
        dc = Devcluster(tmp_path / "dc", "--config-dir", str(EXAMPLES / example), "--config-name", example,
                        "--herd-params", str(params / "herd_param.sh"))
        try:
            dc.wait_for_line("ready:", READY_TIMEOUT)
            proxy, agent = f"http://127.0.0.1:{moved[15000]}", f"127.0.0.1:{moved[16000]}"
            repo = f"examples/{example}"
            config = json.dumps({"architecture": "amd64", "os": "linux", "example": example}).encode()
            layer = os.urandom(3 * MB + 1)
            cd = push_blob_bytes(proxy, repo, config)
            ld = push_blob_bytes(proxy, repo, layer)
            md = push_manifest(proxy, repo, "v1", cd, len(config), ld, len(layer))

            expected = {f"{root}{LAYOUT}/blobs/sha256/{d.hex[:2]}/{d.hex}/data" for d in (cd, ld, md)}
            expected.add(f"{root}{LAYOUT}/repositories/{repo}/_manifests/tags/v1/current/link")
            wait_until(lambda: keys() == expected, 60, 0.2, message=f"the image in the {example} bucket",
                       details=lambda: f"{keys()}\n{dc.output}")
            body, digest, _ = fetch_manifest(agent, repo, "v1")
            assert digest == str(md) and Digest.of_bytes(body) == md
            assert fetch_blob(agent, repo, str(ld)) == layer
            assert fetch_blob(agent, repo, str(cd)) == config
            assert not list((tmp_path / "dc" / "testfs").rglob("data")), "the image went to testfs"
        finally:
            dc.cleanup()
