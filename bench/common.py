"""What the benchmarks share: blobs on disk, pushes, metrics scraping, timed curl fetches,
process memory and connections that never read. What the tests use too lives in tests/support
and is re-exported here."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kraken.core.digest import Digest
from tests.support.cluster import Herd
from tests.support.metrics import metric_sum, scrape
from tests.support.waiting import wait_until

MiB = 1 << 20


def fresh_workdir(root: Path, name: str) -> Path:
    """``root/name``, emptied of what an earlier run of the benchmark left."""
    workdir = root / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return workdir


def random_blob_file(path: Path, size: int, chunk: int = 16 * MiB) -> Digest:
    """Write ``size`` random bytes to ``path`` in chunks (a GiB never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(chunk, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return Digest("sha256", h.hexdigest())


def place_in_distribution(data_dir: Path, repo: str, path: Path, digest: Digest) -> None:
    """Put ``path`` into a distribution registry's filesystem storage as blob ``digest`` of
    ``repo``, as a push would have left it (a hard link: no copy, no upload)."""
    v2 = data_dir / "docker" / "registry" / "v2"
    blob = v2 / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex / "data"
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.link(path, blob)
    link = v2 / "repositories" / repo / "_layers" / digest.algorithm / digest.hex / "link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text(str(digest))


def wait_idle(herd: Herd, timeout: float = 300.0) -> None:
    """Until the origin has no write-back pending, so one step's background work is not
    billed to the next."""

    origin = herd.origin
    context = origin.tls.context() if origin.tls is not None else None

    def drained() -> bool:
        text = scrape(origin.url, context)
        return "kraken_origin_writeback_pending" in text and metric_sum(text, "kraken_origin_writeback_pending") == 0

    wait_until(drained, timeout, 0.2, message="the origin's write-back to drain")


@dataclass
class CurlTiming:
    """One ``curl`` GET: seconds to the first body byte (the server has the whole blob ready)
    and to the last, and the bytes received."""

    first_byte: float
    total: float
    size: int


def start_curl(url: str, netns: str | None = None) -> subprocess.Popen:
    """Start a GET of ``url`` that discards the body (in network namespace ``netns``)."""
    argv = ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} %{size_download}", url]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_curl(proc: subprocess.Popen, timeout: float = 3600.0) -> CurlTiming:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed ({proc.returncode}): {err.strip()}")
    first, total, size = out.split()
    return CurlTiming(float(first), float(total), int(size))


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 8 samples is the slowest one)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]
