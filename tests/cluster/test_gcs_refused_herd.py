"""A herd whose origin writes back to a GCS bucket (a real fake-gcs-server) while that bucket
is out of reach: first the server itself is down, then the service account's token endpoint
refuses the key (as with a revoked key; fake-gcs-server accepts any token, so the refusal is
the token endpoint's).

Either way a push through the proxy is acknowledged at once, the origin logs each failed
write-back naming the backend and the namespace, and retries it; once GCS (or the key) is back,
the blobs land in the bucket in the Docker-distribution layout, byte for byte, without being
pushed again. After the first outage the origin's cache is emptied and the blobs are pulled
back through the proxy: the origin reads them from the bucket, same bytes and digests.
"""
from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kraken.core.digest import Digest
from tests.support.cluster import Herd, start_herd
from tests.support.gcs import FakeGcs, TokenServer, fake_gcs_server, service_account_json
from tests.support.registry_http import fetch_blob, push_blob_bytes
from tests.support.waiting import wait_until

BUCKET = "kraken-outage"
USER = "team-a"
#: Namespace pattern -> (root directory in the bucket, credential set or "" for anonymous).
ROUTES = {"gcs/.*": ("outage", ""), "authed/.*": ("authed", USER)}
LAYOUT = "docker/registry/v2/blobs/sha256"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    """A server of this module's own, keeping its objects on disk so it can be stopped and
    started again (same port) with its bucket intact."""
    workdir = tmp_path_factory.mktemp("fake-gcs")
    with fake_gcs_server(workdir, data_dir=workdir / "data") as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def tokens() -> Iterator[TokenServer]:
    """The service account's token endpoint; refusing until a test says otherwise."""
    with TokenServer(accepting=False) as server:
        yield server


@pytest.fixture(scope="module")
def herd(gcs: FakeGcs, tokens: TokenServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    def backend(root: str, username: str) -> dict[str, Any]:
        # Short library deadlines: each attempt against a dead endpoint fails in seconds.
        return {"gcs": {"bucket": BUCKET, "endpoint": gcs.url, "root_directory": f"/{root}/",
                        "name_path": "sharded_docker_blob", "username": username,
                        "timeout": "3s", "retry_deadline": "1s"}}

    auth = {"gcs": {USER: {"gcs": {"access_blob": service_account_json(tokens.url)}}}}
    h = start_herd(Path(tmp_path_factory.mktemp("herd")), overrides={"origin": {
        "backends": [{"namespace": ns, "backend": backend(*route)} for ns, route in ROUTES.items()],
        "auth": auth, "writeback": {"retry_interval": "200ms", "max_retry_interval": "1s"},
    }})
    try:
        yield h
    finally:
        h.stop()


def blob_key(root: str, digest: Digest) -> str:
    return f"{root}/{LAYOUT}/{digest.hex[:2]}/{digest.hex}/data"


def failed_writebacks(herd: Herd, digest: Digest) -> list[str]:
    return [line for line in herd.origin.log_tail(400).splitlines()
            if "write-back failed, will retry" in line and str(digest) in line]


def wait_in_bucket(gcs: FakeGcs, root: str, blobs: dict[Digest, bytes]) -> None:
    """Until every blob is in the bucket under its Docker-distribution key, then check the bytes."""
    expected = {blob_key(root, d): len(data) for d, data in blobs.items()}
    wait_until(lambda: gcs.objects(BUCKET, f"{root}/") == expected, 60, 0.2,
               message=f"the blobs in the bucket under {root}/", details=lambda: str(gcs.objects(BUCKET)))
    for digest, data in blobs.items():
        assert gcs.read(BUCKET, blob_key(root, digest)) == data


def force_cleanup(herd: Herd) -> list[str]:
    req = urllib.request.Request(f"{herd.origin.url}/forcecleanup?ttl_hr=0", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        evicted: list[str] = json.load(resp)["evicted"]
    return evicted


def test_gcs_down_during_write_back_is_retried_and_nothing_is_lost(herd: Herd, gcs: FakeGcs) -> None:
    repo = "gcs/app"
    gcs.stop()
    try:
        blobs: dict[Digest, bytes] = {}
        for size in (1_000, 1_500_000):
            data = os.urandom(size)
            blobs[push_blob_bytes(herd.proxy.url, repo, data)] = data  # acknowledged (201) while GCS is down
        wait_until(lambda: all(len(failed_writebacks(herd, d)) >= 2 for d in blobs), 60, 0.1,
                   message="every write-back failing, then retried", details=lambda: herd.origin.log_tail(40))
        for digest in blobs:
            line = failed_writebacks(herd, digest)[0]
            assert f"namespace={repo}" in line and "backend=\"gcs backend for namespaces 'gcs/.*'\"" in line, line
            assert f"gcs backend (bucket {BUCKET})" in line, line  # the error says which bucket
    finally:
        gcs.start()  # same port, same data directory: the bucket is back

    wait_in_bucket(gcs, "outage", blobs)

    # Written back and verified, the blobs may leave the origin's cache (pending ones may not,
    # so one sweep may take one blob and a later sweep the other).
    evicted: set[str] = set()

    def all_evicted() -> bool:
        evicted.update(force_cleanup(herd))
        return set(map(str, blobs)) <= evicted

    wait_until(all_evicted, 30, 0.2, message="the blobs evicted from the origin",
               details=lambda: herd.origin.log_tail(20))
    pulled_from = herd.origin.log_path.stat().st_size
    for digest, data in blobs.items():
        pulled = fetch_blob(herd.proxy.addr, repo, str(digest))
        assert pulled == data and Digest.of_bytes(pulled) == digest
    since = herd.origin.log_path.read_bytes()[pulled_from:].decode(errors="replace")
    for digest in blobs:  # read from the bucket, the only copy left
        assert f"blob fetched namespace={repo} digest={digest} source=ok" in since, since


def test_refused_credential_is_named_and_retried_until_the_key_is_accepted(
    herd: Herd, gcs: FakeGcs, tokens: TokenServer
) -> None:
    repo = "authed/app"
    tokens.accepting = False
    try:
        data = os.urandom(300_000)
        digest = push_blob_bytes(herd.proxy.url, repo, data)  # acknowledged: written back later
        wait_until(lambda: len(failed_writebacks(herd, digest)) >= 2, 60, 0.1,
                   message="the write-back refused, then retried", details=lambda: herd.origin.log_tail(40))
        line = failed_writebacks(herd, digest)[0]
        assert f"namespace={repo}" in line and "backend=\"gcs backend for namespaces 'authed/.*'\"" in line, line
        assert f"gcs backend (bucket {BUCKET})" in line and "RefreshError" in line and "invalid_grant" in line, line
        assert tokens.refusals >= 2 and tokens.grants == 0
        assert gcs.objects(BUCKET, "authed/") == {}
    finally:
        tokens.accepting = True  # the key is re-activated: same token URL

    wait_in_bucket(gcs, "authed", {digest: data})
    assert tokens.grants >= 1
    assert fetch_blob(herd.proxy.addr, repo, str(digest)) == data
