"""The seeded OCI layout generator and the harness's small helpers (no daemons needed)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from kraken.devcluster import free_port
from tests.support.ocigen import MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, REF_NAME_ANNOTATION, generate_oci_layout
from tests.support.registry_http import sha256_bytes, sha256_file
from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def _umoci_stat(layout: Path, tag: str) -> str:
    r = subprocess.run(["umoci", "stat", "--image", f"{layout}:{tag}"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"umoci stat failed: {r.stderr}"
    return r.stdout


def _layer_blob_lines(stat_output: str) -> list[str]:
    return [line for line in stat_output.splitlines() if line.startswith("sha256:")]


def test_ocigen_layout_valid_deterministic_and_mergeable(tmp_path: Path) -> None:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    layout = tmp_path / "layout"
    img = generate_oci_layout(layout, "a", [300_000, 700_001], seed=5)

    # umoci accepts it and sees both layers.
    assert _layer_blob_lines(_umoci_stat(layout, "a")) and len(_layer_blob_lines(_umoci_stat(layout, "a"))) == 2
    assert img.oci_ref == f"oci:{layout}:a"
    assert sha256_bytes(img.manifest) == img.manifest_digest
    assert sha256_bytes(img.config) == img.config_digest
    assert img.config_json()["rootfs"]["diff_ids"] == img.diff_ids

    # Every blob is stored under its digest; gzip layers decompress to their diff_id
    # and hold one file of the requested size.
    for digest, diff_id, size in zip(img.layer_digests, img.diff_ids, [300_000, 700_001], strict=True):
        path = img.blob_path(digest)
        assert sha256_file(path) == digest
        raw = gzip.decompress(path.read_bytes())
        assert sha256_bytes(raw) == diff_id
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            files = [m for m in tar.getmembers() if m.isfile()]
            assert [m.size for m in files] == [size]
    assert all(d["mediaType"] == MEDIA_TYPE_LAYER_GZIP for d in img.manifest_json()["layers"])

    # Same seed -> same bytes (in another dir); another seed -> other layers.
    again = generate_oci_layout(tmp_path / "again", "a", [300_000, 700_001], seed=5)
    assert (again.manifest_digest, again.layer_digests) == (img.manifest_digest, img.layer_digests)
    sequential = generate_oci_layout(tmp_path / "seq", "a", [300_000, 700_001], seed=5, jobs=1)
    assert sequential.manifest_digest == img.manifest_digest
    other = generate_oci_layout(tmp_path / "other", "a", [300_000, 700_001], seed=6)
    assert set(other.layer_digests).isdisjoint(img.layer_digests)

    # A second tag (plain tar layers) merges into the same layout; re-generating a
    # tag replaces its index entry instead of duplicating it.
    plain = generate_oci_layout(layout, "b", [123_456], seed=7, gzip_layers=False)
    generate_oci_layout(layout, "a", [300_000, 700_001], seed=5)
    index = json.loads((layout / "index.json").read_text())
    names = sorted(m["annotations"][REF_NAME_ANNOTATION] for m in index["manifests"])
    assert names == ["a", "b"]
    assert plain.layer_digests == plain.diff_ids
    assert plain.manifest_json()["layers"][0]["mediaType"] == MEDIA_TYPE_LAYER_TAR
    assert len(_layer_blob_lines(_umoci_stat(layout, "b"))) == 1
    assert len(_layer_blob_lines(_umoci_stat(layout, "a"))) == 2
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    # No temp files left behind.
    assert not [p for p in (layout / "blobs" / "sha256").iterdir() if p.name.startswith(".")]


def test_ocigen_cli(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.ocigen", str(tmp_path / "l"), "cli", "0.5", "1", "--seed", "9"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout
    summary = json.loads(out)
    assert summary["oci_ref"] == f"oci:{tmp_path / 'l'}:cli"
    assert len(summary["layer_digests"]) == 2
    api = generate_oci_layout(tmp_path / "api", "cli", [MiB // 2, MiB], seed=9)
    assert summary["manifest_digest"] == api.manifest_digest
    bad = subprocess.run(
        [sys.executable, "-m", "tests.support.ocigen", str(tmp_path / "x"), "t", "-1"],
        capture_output=True, text=True, env=env, check=False,
    )
    assert bad.returncode != 0


def test_wait_until_and_free_port() -> None:
    start = time.monotonic()
    calls: list[int] = []

    def third_call() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert wait_until(third_call, timeout=5, interval=0.01) is True
    assert len(calls) == 3
    with pytest.raises(TimeoutError):
        wait_until(lambda: False, timeout=0.1, interval=0.02, message="never")
    assert time.monotonic() - start < 5
    assert 0 < free_port() < 65536
