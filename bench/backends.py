"""Storage backends: the origin's write-back to a store and its lazy fetch back, against the
store's own client library moving the same file in the same run.

Each store is one :class:`StoreBench` entry of :data:`STORES`: a name, a title, and a
``start(workdir)`` context manager that runs the store's server (a fake on this machine) and
yields a :class:`NativeStore`: the origin's ``backend:`` section and ``auth:`` for it, plus the
client library's own upload, download and existence check. Adding a store is one such entry.

Per repetition, with a fresh random blob (so nothing is skipped as already present) and the
order of the two sides alternated:

- native: the library's file upload and download with its default transfer settings (boto3
  ``upload_file`` and ``download_file``; google-cloud-storage ``upload_from_filename`` and
  ``download_to_filename``);
- origin: the blob is pushed to the origin (not timed); from the commit, the write-back (which
  starts at once: ``background.quiet`` is 0 here, the lull it waits for otherwise is no cost
  of the store) is timed until the store acknowledged the upload ("upload": the origin's
  ``kraken_origin_writeback_upload_seconds`` counts it, polled there rather than in the store,
  whose own CPU the native side does not share with a poller either; the object is then
  checked to be in the store) and until the task ends
  ("task": the origin then reads the object back and hashes it before it lets go of the only
  other copy); then the
  origin's cache is emptied (``/forcecleanup``) and a ``HEAD`` of the blob starts the lazy fetch,
  timed until the origin answers 200 (downloaded, hashed, in the cache).

The ratio is native time / origin time: 1.0 is as fast as the library itself.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from bench.common import MiB, fresh_workdir, random_blob_file, wait_idle
from kraken.backend.namepath import ShardedDockerBlobPath
from kraken.core.digest import Digest
from kraken.http.client import create_client
from kraken.http.config import HttpClientConfig
from kraken.origin.client import OriginClient
from tests.support.cluster import Herd, start_herd
from tests.support.gcs import FakeGcs, fake_gcs_server
from tests.support.metrics import metric_sum, scrape
from tests.support.moto import AUTH as S3_AUTH
from tests.support.moto import running_moto
from tests.support.registry_http import http_request
from tests.support.waiting import wait_until

NS = "bench/backends"
POLL = 0.05
#: The origin's S3 part size here: boto3's own (``upload_file``'s 8 MiB chunks), so both sides
#: send the same requests. At Kraken's default (64 MiB), moto, a Python server, spends about
#: 40% more CPU per GiB (see docs/BENCHMARKS.md), a cost of the fake, not of S3.
S3_PART_SIZE = 8 * MiB


class NativeStore(Protocol):
    """A running store, seen by the origin (``backend``, ``auth``) and by its own library."""

    backend: dict[str, Any]
    auth: dict[str, Any]

    def upload(self, path: Path, key: str) -> None: ...

    def download(self, key: str, path: Path) -> None: ...

    def exists(self, key: str) -> bool: ...


@dataclass(frozen=True)
class StoreBench:
    name: str
    title: str
    native: str
    calls: tuple[str, str]  # the library's upload and download calls, as the table names them
    start: Callable[[Path], AbstractContextManager[NativeStore]]


class S3Store:
    def __init__(self, client: Any, bucket: str, backend: dict[str, Any]) -> None:
        self.client, self.bucket = client, bucket
        self.backend = {"s3": backend}
        self.auth = S3_AUTH

    def upload(self, path: Path, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, key)

    def download(self, key: str, path: Path) -> None:
        self.client.download_file(self.bucket, key, str(path))

    def exists(self, key: str) -> bool:
        return bool(self.client.list_objects_v2(Bucket=self.bucket, Prefix=key).get("KeyCount"))


@contextmanager
def _s3(workdir: Path) -> Iterator[NativeStore]:
    with running_moto(workdir / "moto") as server:
        bucket = server.create_bucket("bench")
        yield S3Store(server.client(), bucket, server.backend_settings(
            bucket, name_path="sharded_docker_blob", upload_part_size=S3_PART_SIZE))


class GcsStore:
    def __init__(self, gcs: FakeGcs, bucket: str) -> None:
        self.gcs, self.name = gcs, bucket
        self.client = storage.Client(project=None, credentials=AnonymousCredentials(),
                                     client_options={"api_endpoint": gcs.url})
        self.bucket = self.client.bucket(bucket)
        self.backend = {"gcs": {"bucket": bucket, "endpoint": gcs.url, "name_path": "sharded_docker_blob"}}
        self.auth: dict[str, Any] = {}

    def upload(self, path: Path, key: str) -> None:
        self.bucket.blob(key).upload_from_filename(str(path))

    def download(self, key: str, path: Path) -> None:
        self.bucket.blob(key).download_to_filename(str(path))

    def exists(self, key: str) -> bool:
        """Read by the JSON API directly; a resumable upload's object appears with its last chunk."""
        return key in self.gcs.objects(self.name, key)


@contextmanager
def _gcs(workdir: Path) -> Iterator[NativeStore]:
    with fake_gcs_server(workdir / "fake-gcs") as gcs:
        store = GcsStore(gcs, gcs.create_bucket("bench"))
        try:
            yield store
        finally:
            store.client.close()


STORES = [
    StoreBench("s3", "S3 (moto_server)", "boto3", ("upload_file", "download_file"), _s3),
    StoreBench("gcs", "GCS (fake-gcs-server)", "google-cloud-storage", ("upload_from_filename", "download_to_filename"),
               _gcs),
]


def _writebacks(herd: Herd) -> float:
    return metric_sum(scrape(herd.origin.url), "kraken_origin_writebacks_total")


def _uploads(herd: Herd) -> float:
    """Backend uploads the origin saw acknowledged (the store answered the last request)."""
    return metric_sum(scrape(herd.origin.url), "kraken_origin_writeback_upload_seconds_count")


def _origin_side(herd: Herd, store: NativeStore, path: Path, digest: Digest, rep: int) -> tuple[float, float, float]:
    """(write-back upload, write-back task, lazy fetch) seconds of one blob."""
    key = ShardedDockerBlobPath().path(digest.hex)
    done_before, uploads_before = _writebacks(herd), _uploads(herd)

    async def push() -> None:
        http = create_client(HttpClientConfig())
        try:
            await OriginClient(herd.origin.addr, http).upload_file(NS, digest, path)
        finally:
            await http.close()

    asyncio.run(push())
    committed = time.monotonic()
    wait_until(lambda: _uploads(herd) > uploads_before, 3600, POLL, message=f"blob {rep} uploaded")
    uploaded = time.monotonic() - committed
    assert store.exists(key), f"the origin's upload of blob {rep} acknowledged, yet the store lacks it"
    wait_until(lambda: _writebacks(herd) > done_before, 3600, POLL, message=f"write-back {rep} to end")
    task = time.monotonic() - committed
    wait_idle(herd)
    wait_until(lambda: _metainfos_generated(herd, digest) >= 1, 600, POLL, message=f"metainfo {rep} after the push")
    evicted = http_request(f"{herd.origin.url}/forcecleanup?ttl_hr=0", method="POST")
    assert evicted.status == 200 and str(digest).encode() in evicted.body, evicted
    url = f"{herd.origin.url}/namespace/{NS.replace('/', '%2F')}/blobs/{digest}"
    started = time.monotonic()
    wait_until(lambda: http_request(url, method="HEAD").status == 200, 3600, POLL, message=f"lazy fetch {rep}")
    fetched = time.monotonic() - started
    # The fetch starts the metainfo's SHA-1 pass in the background (as the commit did): let it
    # end here rather than beside the next repetition's transfers.
    wait_until(lambda: _metainfos_generated(herd, digest) >= 2, 600, POLL, message=f"metainfo {rep}")
    return uploaded, task, fetched


def _metainfos_generated(herd: Herd, digest: Digest) -> int:
    return sum(1 for line in herd.origin.log_tail(400).splitlines()
               if "metainfo generated" in line and str(digest) in line)


def _timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def _bench_store(bench: StoreBench, workdir: Path, size: int, reps: int) -> str:
    times: dict[str, list[float]] = {k: [] for k in ("native_up", "native_down", "upload", "task", "fetch")}
    with bench.start(workdir) as store:
        herd = start_herd(workdir / "herd", overrides={"origin": {
            "backends": [{"namespace": ".*", "backend": store.backend}], "auth": store.auth,
            "writeback": {"retry_interval": "100ms"}, "background": {"quiet": "0s"},
        }})
        try:
            for rep in range(reps):
                _bench_rep(herd, store, workdir, size, rep, times)
        finally:
            herd.stop()
    return _report(bench, size, reps, times)


def _bench_rep(herd: Herd, store: NativeStore, workdir: Path, size: int, rep: int,
               times: dict[str, list[float]]) -> None:
    """One fresh blob through both sides, the side that goes first alternating."""
    path = workdir / f"blob-{rep}"
    digest = random_blob_file(path, size)
    out = workdir / f"native-{rep}.out"

    def native() -> None:
        times["native_up"].append(_timed(lambda: store.upload(path, f"native/{rep}")))
        times["native_down"].append(_timed(lambda: store.download(f"native/{rep}", out)))
        out.unlink()

    def origin() -> None:
        for name, seconds in zip(("upload", "task", "fetch"), _origin_side(herd, store, path, digest, rep),
                                 strict=True):
            times[name].append(seconds)

    for side in (native, origin) if rep % 2 == 0 else (origin, native):
        side()
    path.unlink()


def _report(bench: StoreBench, size: int, reps: int, times: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    mbps = lambda t: size / MiB / t  # noqa: E731
    up, down = bench.calls
    rows = [
        ("write-back, until the object is stored", "upload", "native_up", up),
        ("write-back task (+ read-back and hash)", "task", "native_up", up),
        ("lazy fetch into the origin (+ hash)", "fetch", "native_down", down),
    ]
    lines = [
        f"### {bench.title}: {size / MiB:.0f} MiB blob, {reps} reps, medians",
        "",
        f"| origin | s (MiB/s) | {bench.native} | s (MiB/s) | ratio {bench.native}/origin |",
        "|---|---|---|---|---|",
    ]
    for label, ours, theirs, call in rows:
        o, n = med[ours], med[theirs]
        lines.append(f"| {label} | {o:.2f} ({mbps(o):.0f}) | `{call}` | {n:.2f} ({mbps(n):.0f}) | {n / o:.2f} |")
    lines.append("")
    lines.append("raw seconds: " + ", ".join(f"{k}={[f'{t:.2f}' for t in v]}" for k, v in times.items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    size = args.backend_size_mb * MiB
    return "\n\n".join(_bench_store(bench, fresh_workdir(args.workdir, f"backends-{bench.name}"), size, args.reps)
                       for bench in STORES)
