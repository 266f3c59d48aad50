"""Memory under slow readers: 200 connections that ask for a big response and read nothing.

A herd with one agent; an image with a 4 MB manifest and a 200 MiB blob is pushed through
the proxy and read once through the agent (both then serve from their disk). Then, for each
case, 200 connections GET the manifest from the proxy, the manifest from the agent, or the
blob from the agent or the proxy (which relays it from the origin), read the response head and
then nothing, until every response is stalled on them. The serving process's resident memory
(``VmRSS``) is read before, while they are stalled, and after they closed; its peak (``VmHWM``) too. The bound
(:data:`BOUND_MIB`) is the issue's: at most 150 MiB for the 200 slow readers.
"""
from __future__ import annotations

import argparse
import time
import urllib.request

from bench.common import MiB, fresh_workdir, random_blob_file
from kraken.devcluster import Process
from kraken.registry.manifest import OCI_MANIFEST
from tests.support.cluster import start_herd, wait_metainfo
from tests.support.metrics import metric_sum, scrape
from tests.support.process import rss_mib
from tests.support.rawsockets import slow_readers
from tests.support.registry_http import push_blob_file, push_padded_image

REPO = "bench/slowreaders"
MANIFEST_SIZE = (4 << 20) - 1024
BOUND_MIB = 150


def _read(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": OCI_MANIFEST}), timeout=600) as resp:
        while resp.read(MiB):
            pass


def _wait_closed(proc: Process, timeout: float = 60.0) -> None:
    """Until the server counts no connection but the metrics request's own."""
    deadline = time.monotonic() + timeout
    while metric_sum(scrape(proc.url), "kraken_http_connections_open", port=str(proc.port)) > 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} kept the slow readers' connections")
        time.sleep(0.1)


def _measure(proc: Process, path: str, readers: int) -> tuple[float, float, float, float]:
    """RSS before, during and after ``readers`` slow readers, and the peak, in MiB."""
    assert proc.popen is not None
    pid = proc.popen.pid
    before, _ = rss_mib(pid)
    socks = slow_readers(proc.host, proc.port, path, readers)
    try:
        during, _ = rss_mib(pid)
    finally:
        for sock in socks:
            sock.close()
    _wait_closed(proc)
    after, peak = rss_mib(pid)
    return before, during, after, peak


def run(args: argparse.Namespace) -> str:
    workdir = fresh_workdir(args.workdir, "slowreaders")
    blob_size = args.slow_blob_mb * MiB
    blob_path = workdir / "blob"
    blob = random_blob_file(blob_path, blob_size)
    herd = start_herd(workdir / "herd", agents=1)
    rows = []
    try:
        agent = herd.agents[0]
        push_padded_image(herd.proxy.url, REPO, "v1", MANIFEST_SIZE)
        push_blob_file(herd.proxy.url, REPO, blob_path, blob)
        wait_metainfo(herd.origin.url + "/internal", REPO, blob)
        cases = [
            ("proxy", herd.proxy, f"/v2/{REPO}/manifests/v1", "4 MB manifest"),
            ("agent", agent, f"/v2/{REPO}/manifests/v1", "4 MB manifest"),
            ("agent", agent, f"/v2/{REPO}/blobs/{blob}", f"{args.slow_blob_mb} MiB blob"),
            ("proxy", herd.proxy, f"/v2/{REPO}/blobs/{blob}", f"{args.slow_blob_mb} MiB blob"),
        ]
        for _, proc, path, _ in cases:
            _read(f"{proc.url}{path}")
        for name, proc, path, what in cases:
            rows.append((name, what, *_measure(proc, path, args.readers)))
    finally:
        herd.stop()
        blob_path.unlink()
    lines = [
        f"### Slow readers: {args.readers} connections that read nothing (RSS, MiB; bound {BOUND_MIB})",
        "",
        "| process | response | before | during | after | peak (VmHWM) | within bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, what, before, during, after, peak in rows:
        lines.append(f"| {name} | {what} | {before:.0f} | {during:.0f} | {after:.0f} | {peak:.0f} | "
                     f"{'yes' if max(during, peak) <= BOUND_MIB else 'NO'} |")
    return "\n".join(lines)
