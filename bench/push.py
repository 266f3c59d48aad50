"""Push and pull throughput through the proxy vs Debian's distribution registry.

Both registries run on this machine in the same run, on the same disk, driven by the same
client (skopeo), with a fresh random image per repetition so no push is skipped by a HEAD hit
or a cross-repo mount. The ratio is registry time / proxy time: 1.0 means as fast as
distribution, above 1.0 faster.

Each timed operation starts with the herd idle: the origin's write-back of the previous push
to its storage backend (testfs, here on the same two cores; a remote store in production) has
drained, so one push's background work is not billed to the next. The herd still does all of
its work for the push being timed (staging, verifying, streaming to the origin, fsync,
metainfo, write-back) while it is timed.

With ``--tls`` both registries serve HTTPS (distribution through ``http.tls``, the proxy
through its ``tls.server``) and skopeo verifies them against a throwaway CA
(``--dest-cert-dir``/``--src-cert-dir``); inside the herd every hop is TLS, with client
certificates (mTLS) to origin, build-index, testfs and the tracker: what issue 11's "push
ratio over TLS, distribution also on TLS" is measured with.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import fresh_workdir, wait_idle
from tests.support.cluster import Herd, start_herd
from tests.support.distribution import DistributionRegistry, DistributionTLS
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.pki import Pki, make_pki
from tests.support.skopeo import Skopeo

MiB = 1 << 20
#: The herd's components, each serving and calling over TLS with ``--tls``.
TLS_COMPONENTS = ("testfs", "origin", "tracker", "build-index", "proxy")


def _timed(fn: Callable[..., object], *args: object) -> float:
    """Seconds ``fn(*args)`` takes."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _curl_blob(host: str, repo: str, digest: str, pki: Pki | None) -> float:
    """Time a raw streamed GET of one blob (what a client with no unpacking sees)."""
    scheme, context = ("https", pki.context(None)) if pki else ("http", None)
    start = time.perf_counter()
    with urllib.request.urlopen(f"{scheme}://{host}/v2/{repo}/blobs/{digest}", timeout=300,
                                context=context) as resp:
        while resp.read(4 * MiB):
            pass
    return time.perf_counter() - start


def _start(workdir: Path, pki: Pki | None) -> tuple[Herd, DistributionRegistry]:
    """The herd and the distribution registry, both on TLS when ``pki`` is given."""
    if pki is None:
        return start_herd(workdir / "herd"), DistributionRegistry(workdir / "registry").start()
    overrides = {name: {"tls": pki.section()} for name in TLS_COMPONENTS}
    herd = start_herd(workdir / "herd", overrides=overrides,
                      probe_tls={name: pki.probe() for name in TLS_COMPONENTS})
    tls = DistributionTLS(pki["server.pem"], pki.plain_server_key(), pki["ca.pem"])
    try:
        return herd, DistributionRegistry(workdir / "registry", tls=tls).start()
    except BaseException:
        herd.stop()
        raise


def _skopeo_args(ca_dir: Path | None, side: str) -> dict[str, Any]:
    """``skopeo copy`` options: plain HTTP, or TLS verified against the CA in ``ca_dir``."""
    if ca_dir is None:
        return {}
    return {"tls_verify": True, "extra_args": [f"--{side}-cert-dir", str(ca_dir)]}


def run(args: argparse.Namespace) -> str:
    workdir = fresh_workdir(args.workdir, "push")
    images: list[GeneratedImage] = [
        generate_oci_layout(workdir / f"oci-{i}", "bench", [args.size_mb * MiB], seed=1000 + i)
        for i in range(args.reps)
    ]
    size = images[0].total_size
    times: dict[str, list[float]] = {k: [] for k in ("push_reg", "push_kr", "pull_reg", "pull_kr", "get_reg", "get_kr")}
    pki = make_pki(workdir / "pki") if args.tls else None
    ca_dir = None
    if pki is not None:
        ca_dir = workdir / "ca"
        ca_dir.mkdir()
        shutil.copy(pki["ca.pem"], ca_dir / "ca.crt")
    herd, registry = _start(workdir, pki)
    try:
        targets = {"reg": registry.host, "kr": herd.proxy.addr}
        for i, image in enumerate(images):
            repo = f"bench/push{i}"
            order = ("reg", "kr") if i % 2 == 0 else ("kr", "reg")
            for name in order:
                wait_idle(herd)
                with Skopeo() as skopeo:
                    times[f"push_{name}"].append(_timed(
                        partial(skopeo.copy, **_skopeo_args(ca_dir, "dest")),
                        image.oci_ref, f"docker://{targets[name]}/{repo}:v1",
                    ))
            for name in order:
                wait_idle(herd)
                dest = workdir / f"pull-{name}-{i}"
                with Skopeo() as skopeo:
                    times[f"pull_{name}"].append(_timed(
                        partial(skopeo.copy, **_skopeo_args(ca_dir, "src")),
                        f"docker://{targets[name]}/{repo}:v1", f"dir:{dest}",
                    ))
                shutil.rmtree(dest)
                times[f"get_{name}"].append(_curl_blob(targets[name], repo, image.layer_digests[0], pki))
    finally:
        registry.stop()
        herd.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    mbps = lambda t: size / MiB / t  # noqa: E731
    over = " over TLS (both HTTPS; herd hops mTLS)" if pki else ""
    rows = [
        ("push (skopeo oci: -> docker://)", "push"),
        ("pull (skopeo docker:// -> dir:)", "pull"),
        ("blob GET (streamed, no unpack)", "get"),
    ]
    lines = [
        f"### Push/pull through the proxy vs distribution 2.8{over} ({size / MiB:.0f} MiB single layer, "
        f"{args.reps} reps, medians)",
        "",
        "| operation | distribution s (MiB/s) | kraken proxy s (MiB/s) | ratio (higher is better) |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        reg, kr = med[f"{key}_reg"], med[f"{key}_kr"]
        lines.append(f"| {label} | {reg:.2f} ({mbps(reg):.0f}) | {kr:.2f} ({mbps(kr):.0f}) | {reg / kr:.2f} |")
    lines.append("")
    lines.append("raw seconds: " + ", ".join(f"{k}={[f'{t:.2f}' for t in v]}" for k, v in times.items()))
    return "\n".join(lines)
