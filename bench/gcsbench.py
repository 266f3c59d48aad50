"""GCS backend throughput against google-cloud-storage's own transfers, on fake-gcs-server.

In one run, on one fake-gcs-server (the real Go emulator, objects in its memory):

- **write-back**: a blob pushed through the proxy is written back by the origin (write-back
  started at once: ``background.quiet: 0``); timed from the end of the push until the object
  is complete in the bucket (a resumable upload's object appears with its last chunk). The
  origin's read-back verification that follows is timed too, and shown apart.
- **upload_from_filename**: the same file uploaded by google-cloud-storage directly, with the
  library's default chunk size (100 MiB) and with the origin's (``upload_chunk_size``).
- **lazy fetch**: with every origin cache wiped, a GET of the blob from the origin makes it
  fetch the blob from the bucket; timed until the origin serves it from its cache (the download
  and the origin's import into its store, which hashes the blob).
- **download_to_filename**: the same object downloaded by google-cloud-storage directly, and
  by the backend itself outside the origin (``GcsBackend.download alone``): the difference
  between that and the lazy fetch is the origin's own work (its store hashes the blob before
  taking it in).

Ratios are library seconds / origin seconds: 1.0 means as fast as the library's own transfer.
``python -m bench.gcsbench [--size-mb 1024] [--reps 1]``.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from bench.common import MiB, fresh_workdir, random_blob_file, wait_idle
from kraken.backend import create_backend
from kraken.backend.gcs import DEFAULT_CHUNK_SIZE
from kraken.core.digest import Digest
from tests.support.cluster import Herd, start_herd
from tests.support.gcs import FakeGcs, fake_gcs_server
from tests.support.metrics import metric_sum, scrape
from tests.support.waiting import wait_until

BUCKET = "bench"
REPO = "gcs/bench"
BLOBS = "docker/registry/v2/blobs/sha256"


@dataclass
class Timings:
    """Seconds per repetition, by measurement."""

    runs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.runs.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])


def _timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def _push(herd: Herd, path: Path, digest: Digest) -> None:
    """A monolithic blob push through the proxy, streamed from the file."""
    with urllib.request.urlopen(urllib.request.Request(
            f"{herd.proxy.url}/v2/{REPO}/blobs/uploads/", data=b"", method="POST"), timeout=60) as resp:
        location = resp.headers["Location"]
    size = path.stat().st_size
    with open(path, "rb") as f, urllib.request.urlopen(urllib.request.Request(
            f"{location}{'&' if '?' in location else '?'}digest={digest}", data=f, method="PUT",
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"}), timeout=3600) as resp:
        assert resp.status == 201, resp.status


def _object_complete(gcs: FakeGcs, key: str, size: int) -> bool:
    return gcs.objects(BUCKET, key).get(key) == size


def _writebacks(herd: Herd) -> float:
    return metric_sum(scrape(herd.origin.url), "kraken_origin_writebacks_total")


async def _backend_download(gcs: FakeGcs, digest: Digest, dst: Path) -> None:
    """The backend's own download of the blob, outside the origin (no import into a store)."""
    backend = create_backend(gcs.backend_config(BUCKET, name_path="sharded_docker_blob"))
    try:
        await backend.download(REPO, digest.hex, dst)
    finally:
        await backend.close()


def _wipe_origin(herd: Herd) -> None:
    herd.supervisor.stop("origin")
    shutil.rmtree(herd.workdir / "origin")
    herd.supervisor.start(herd.origin)


def _lazy_fetch(herd: Herd, digest: Digest) -> None:
    """Ask the (wiped) origin for the blob; wait until it serves it from its own cache."""
    blob = f"/namespace/{REPO.replace('/', '%2F')}/blobs/{digest}"
    with urllib.request.urlopen(f"{herd.origin.url}{blob}", timeout=60) as resp:
        assert resp.status == 202, resp.status  # the fetch has started

    def cached() -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{herd.origin.url}/internal{blob}", method="HEAD"),
                                        timeout=60) as resp:
                return resp.status == 200
        except urllib.error.HTTPError:
            return False

    wait_until(cached, 3600, 0.02, message="the origin's lazy fetch")


def _one_rep(gcs: FakeGcs, herd: Herd, bucket: storage.Bucket, workdir: Path, size: int, rep: int,
             timings: Timings) -> None:
    src, dst = workdir / "blob", workdir / "downloaded"
    digest = random_blob_file(src, size)
    key = f"{BLOBS}/{digest.hex[:2]}/{digest.hex}/data"
    baseline = f"baseline/{rep}"
    for name, chunk in (("upload_from_filename", None), ("upload_from_filename, same chunks", DEFAULT_CHUNK_SIZE)):
        timings.add(name, _timed(partial(bucket.blob(baseline, chunk_size=chunk).upload_from_filename, str(src))))

    done_before = _writebacks(herd)
    _push(herd, src, digest)
    pushed = time.monotonic()
    wait_until(partial(_object_complete, gcs, key, size), 3600, 0.02, message="the write-back's object")
    timings.add("write-back", time.monotonic() - pushed)
    wait_until(lambda: _writebacks(herd) > done_before, 3600, 0.05, message="the write-back")
    timings.add("write-back + verify", time.monotonic() - pushed)
    wait_idle(herd)

    timings.add("download_to_filename", _timed(partial(bucket.blob(baseline).download_to_filename, str(dst))))
    dst.unlink()
    timings.add("GcsBackend.download alone", _timed(partial(asyncio.run, _backend_download(gcs, digest, dst))))
    dst.unlink()
    _wipe_origin(herd)
    timings.add("lazy fetch", _timed(partial(_lazy_fetch, herd, digest)))
    for name in (baseline, key):
        bucket.blob(name).delete()
    src.unlink()


def measure(workdir: Path, size: int, reps: int) -> Timings:
    timings = Timings()
    with fake_gcs_server(workdir) as gcs:
        gcs.create_bucket(BUCKET)
        gcs_route = {"bucket": BUCKET, "endpoint": gcs.url, "name_path": "sharded_docker_blob"}
        herd = start_herd(workdir / "herd", overrides={
            "origin": {"backends": [{"namespace": ".*", "backend": {"gcs": gcs_route}}],
                       "background": {"quiet": 0}},
        })
        client = storage.Client(project=None, credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": gcs.url})
        try:
            for rep in range(reps):
                _one_rep(gcs, herd, client.bucket(BUCKET), workdir, size, rep, timings)
        finally:
            client.close()
            herd.stop()
    return timings


def report(timings: Timings, size: int, reps: int) -> str:
    rows = [f"GCS backend vs google-cloud-storage on fake-gcs-server: {size // MiB} MiB blob, "
            f"median of {reps} (ratio = library s / origin s; 1.0 = as fast)"]
    for name in ("write-back", "write-back + verify", "upload_from_filename", "upload_from_filename, same chunks",
                 "lazy fetch", "GcsBackend.download alone", "download_to_filename"):
        seconds = timings.median(name)
        rows.append(f"  {name:<36} {seconds:7.2f} s  {size / MiB / seconds:7.1f} MiB/s")
    wb = timings.median("write-back")
    rows.append(f"  write-back / upload_from_filename:          "
                f"{timings.median('upload_from_filename') / wb:.2f} "
                f"(same chunks: {timings.median('upload_from_filename, same chunks') / wb:.2f})")
    download = timings.median("download_to_filename")
    rows.append(f"  lazy fetch / download_to_filename:          {download / timings.median('lazy fetch'):.2f} "
                f"(the backend's download alone: {download / timings.median('GcsBackend.download alone'):.2f})")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> str:
    """The measurement as ``python -m bench`` runs its benchmarks: ``args.gcs_size_mb``
    (default 1024), ``args.reps`` and ``args.workdir``."""
    size = getattr(args, "gcs_size_mb", 1024) * MiB
    reps = getattr(args, "reps", 1)
    workdir = fresh_workdir(getattr(args, "workdir", Path("/tmp/kraken-bench")), "gcs")
    return report(measure(workdir, size, reps), size, reps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gcsbench")
    parser.add_argument("--size-mb", dest="gcs_size_mb", type=int, default=1024, help="blob size")
    parser.add_argument("--reps", type=int, default=1, help="repetitions (medians are shown)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kraken-bench"))
    print(run(parser.parse_args(argv)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
