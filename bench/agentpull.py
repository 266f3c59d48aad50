"""One agent, no rate limits: a 1 GiB blob pulled cold and warm, manifests by tag, and the
first pull of small blobs.

Cold: the blob is not in the agent's cache (deleted through the agent server before each
repetition), so the time covers the metainfo from the tracker, the BitTorrent download from
the origin, the sha256 of the whole file, the move into the cache and the HTTP response.
Warm: the same GET again, served from the cache, on the agent server (``/namespace/...``)
and on the agent's registry port (``/v2/...``, what docker asks). The baseline is ``curl``
of the same blob from Debian's distribution registry on the same disk (what a host pulling
from a central registry would get). Times are to curl's last byte; ratios are distribution /
agent, so above 1.0 the agent is faster.

Manifest by tag through the agent's registry (``GET /v2/<repo>/manifests/<tag>``): cold (the
manifest blob deleted from the agent's cache first: tag from build-index, manifest over P2P)
and warm (tag from build-index, manifest from the cache), against distribution's; each is
curl's own ``time_total``, the median of :data:`MANIFEST_GETS`.

Small blobs, cold (issue 14, goal 2): :data:`FRESH_IMAGES` images are pushed, then for each
the first GET through the agent of its manifest by tag and of its config blob (neither ever
seen by the agent); medians in ms, on their own line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import urllib.request

from bench.common import MiB, fresh_workdir, place_in_distribution, random_blob_file, wait_idle
from kraken.registry.manifest import OCI_MANIFEST
from tests.support.cluster import Herd, start_herd, wait_metainfo
from tests.support.distribution import DistributionRegistry
from tests.support.registry_http import push_blob_bytes, push_blob_file, push_manifest

REPO = "bench/agentpull"
MANIFEST_GETS = 20
FRESH_IMAGES = 5


def _curl_seconds(url: str, accept: str | None = None) -> float:
    """curl's ``time_total`` of a GET of ``url`` (body discarded): excludes starting curl."""
    argv = ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_total}", url]
    if accept is not None:
        argv[1:1] = ["-H", f"Accept: {accept}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"curl {url} failed ({out.returncode}): {out.stderr.strip()}")
    return float(out.stdout)


def _delete(url: str) -> None:
    req = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204, resp.status


def _manifest_seconds(registry_url: str, tag: str) -> float:
    return _curl_seconds(f"{registry_url}/v2/{REPO}/manifests/{tag}", OCI_MANIFEST)


def run(args: argparse.Namespace) -> str:
    workdir = fresh_workdir(args.workdir, "agentpull")
    size = args.fanout_size_mb * MiB
    blob = workdir / "blob"
    digest = random_blob_file(blob, size)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    keys = ("cold", "warm", "warm_v2", "dist", "m_cold", "m_warm", "m_dist", "s_manifest", "s_config")
    times: dict[str, list[float]] = {k: [] for k in keys}
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
            times["warm_v2"].append(_curl_seconds(f"{agent.url}/v2/{REPO}/blobs/{digest}"))
            _delete(f"{server}/blobs/{digest}")
        _manifest_seconds(agent.url, "v1")  # cached, so that each cold run can delete it first
        for _ in range(args.reps):
            _delete(f"{server}/blobs/{manifest}")
            times["m_cold"].append(_manifest_seconds(agent.url, "v1"))
        for _ in range(MANIFEST_GETS):
            times["m_warm"].append(_manifest_seconds(agent.url, "v1"))
            times["m_dist"].append(_manifest_seconds(registry.url, "v1"))
        _small_blobs(herd, times)
    finally:
        registry.stop()
        herd.stop()
    blob.unlink()
    return _report(args, size, times)


def _small_blobs(herd: Herd, times: dict[str, list[float]]) -> None:
    """Push :data:`FRESH_IMAGES` images (a unique config and a 1 KiB layer each), let the
    origin's write-back finish, then time each one's first manifest and config GET."""
    proxy, agent = herd.proxy.url, herd.agents[0].url
    images = []
    for i in range(FRESH_IMAGES):
        config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(16).hex()}).encode()
        config_digest = push_blob_bytes(proxy, REPO, config)
        layer = os.urandom(1024)
        layer_digest = push_blob_bytes(proxy, REPO, layer)
        push_manifest(proxy, REPO, f"fresh{i}", config_digest, len(config), layer_digest, len(layer))
        images.append((f"fresh{i}", config_digest))
    wait_idle(herd)
    for tag, config_digest in images:
        times["s_manifest"].append(_manifest_seconds(agent, tag))
        times["s_config"].append(_curl_seconds(f"{agent}/v2/{REPO}/blobs/{config_digest}"))


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
        ("blob, warm (agent server, from the cache)", blob("warm"), blob("dist"), med["dist"] / med["warm"]),
        ("blob, warm (agent registry /v2/, from the cache)", blob("warm_v2"), blob("dist"),
         med["dist"] / med["warm_v2"]),
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
        f"small blobs, cold (first GET through the agent, median of {FRESH_IMAGES} fresh images): "
        f"manifest by tag {ms('s_manifest')}, config blob {ms('s_config')}",
        "",
        "raw seconds: " + ", ".join(f"{k}={[round(t, 4) for t in v]}" for k, v in times.items() if len(v) <= 5),
    ])
