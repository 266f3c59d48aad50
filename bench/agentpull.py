"""One agent, no rate limits: a 1 GiB blob pulled cold and warm, and manifests by tag.

Cold: the blob is not in the agent's cache (deleted through the agent server before each
repetition), so the time covers the metainfo from the tracker, the BitTorrent download from
the origin, the sha256 of the whole file, the move into the cache and the HTTP response.
Warm: the same GET again, served from the cache. The baseline is ``curl`` of the same blob
from Debian's distribution registry on the same disk (what a host pulling from a central
registry would get). Times are to curl's last byte; ratios are distribution / agent, so
above 1.0 the agent is faster.

Manifest by tag through the agent's registry (``GET /v2/<repo>/manifests/<tag>``): cold (the
manifest blob deleted from the agent's cache first: tag from build-index, manifest over P2P)
and warm (tag from build-index, manifest from the cache), against distribution's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request

from bench.common import MiB, finish_curl, fresh_workdir, place_in_distribution, random_blob_file, start_curl, wait_idle
from kraken.registry.manifest import OCI_MANIFEST
from tests.support.cluster import start_herd, wait_metainfo
from tests.support.distribution import DistributionRegistry
from tests.support.registry_http import push_blob_bytes, push_blob_file, push_manifest

REPO = "bench/agentpull"
MANIFEST_GETS = 20


def _curl_seconds(url: str) -> float:
    return finish_curl(start_curl(url)).total


def _delete(url: str) -> None:
    req = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204, resp.status


def _manifest_seconds(registry_url: str, tag: str) -> float:
    req = urllib.request.Request(f"{registry_url}/v2/{REPO}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        json.loads(resp.read())
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> str:
    workdir = fresh_workdir(args.workdir, "agentpull")
    size = args.fanout_size_mb * MiB
    blob = workdir / "blob"
    digest = random_blob_file(blob, size)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    times: dict[str, list[float]] = {k: [] for k in ("cold", "warm", "dist", "m_cold", "m_warm", "m_dist")}
    herd = start_herd(workdir / "herd", agents=1)
    registry = DistributionRegistry(workdir / "registry").start()
    try:
        agent = herd.agents[0]
        server = f"http://127.0.0.1:{agent.health_port}"
        push_blob_file(herd.proxy.url, REPO, blob, digest)
        config_digest = push_blob_bytes(herd.proxy.url, REPO, config)
        manifest = push_manifest(herd.proxy.url, REPO, "v1", config_digest, len(config), digest, size)
        place_in_distribution(registry.data_dir, REPO, blob, digest)
        push_blob_bytes(registry.url, REPO, config)
        push_manifest(registry.url, REPO, "v1", config_digest, len(config), digest, size)
        wait_idle(herd)
        wait_metainfo(herd.origin.url + "/internal", REPO, digest)
        blob_url = f"{server}/namespace/{REPO.replace('/', '%2F')}/blobs/{digest}"
        for _ in range(args.reps):
            times["dist"].append(_curl_seconds(f"{registry.url}/v2/{REPO}/blobs/{digest}"))
            times["cold"].append(_curl_seconds(blob_url))
            times["warm"].append(_curl_seconds(blob_url))
            _delete(f"{server}/blobs/{digest}")
        _manifest_seconds(agent.url, "v1")  # cached, so that each cold run can delete it first
        for _ in range(args.reps):
            _delete(f"{server}/blobs/{manifest}")
            times["m_cold"].append(_manifest_seconds(agent.url, "v1"))
        for _ in range(MANIFEST_GETS):
            times["m_warm"].append(_manifest_seconds(agent.url, "v1"))
            times["m_dist"].append(_manifest_seconds(registry.url, "v1"))
    finally:
        registry.stop()
        herd.stop()
    blob.unlink()
    return _report(args, size, times)


def _report(args: argparse.Namespace, size: int, times: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}

    def blob(key: str) -> str:
        return f"{med[key]:.2f} s ({size / MiB / med[key]:.0f} MiB/s)"

    def ms(key: str) -> str:
        return f"{med[key] * 1000:.1f} ms"

    rows = [
        (
            "blob, cold (P2P from the origin, sha256, cache, serve)",
            blob("cold"),
            blob("dist"),
            med["dist"] / med["cold"],
        ),
        ("blob, warm (from the agent's cache)", blob("warm"), blob("dist"), med["dist"] / med["warm"]),
        ("manifest by tag, cold", ms("m_cold"), ms("m_dist"), med["m_dist"] / med["m_cold"]),
        (f"manifest by tag, warm ({MANIFEST_GETS} GETs)", ms("m_warm"), ms("m_dist"), med["m_dist"] / med["m_warm"]),
    ]
    return "\n".join([
        f"### One agent, no limits: {size / MiB:.0f} MiB blob ({args.reps} reps, medians) and manifests by tag",
        "",
        "| operation | agent | distribution (curl) | ratio (distribution / agent) |",
        "|---|---|---|---|",
        *(f"| {label} | {agent} | {dist} | {ratio:.2f} |" for label, agent, dist, ratio in rows),
        "",
        "raw seconds: " + ", ".join(f"{k}={[round(t, 3) for t in v]}" for k, v in times.items() if len(v) <= 5),
    ])
