"""Per-backend bandwidth limits (kraken.backend.bandwidth) and the readiness probe of the
backend interface, against the file backend built as the components build it (build_router)."""
from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable
from pathlib import Path
from types import SimpleNamespace

import pytest

from kraken.backend import BackendConfig, BackendError, BackendNotFound, FileBackendConfig, NamespaceBackendConfig
from kraken.backend.bandwidth import BandwidthConfig, BandwidthLimiter, ThrottledBackend, TokenBucket
from kraken.backend.base import READINESS_NAMES, Backend, BlobInfo
from kraken.backend.router import BackendRouter, Route, build_router
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.server import BuildIndex
from kraken.config import ConfigError, build, load_config
from kraken.devcluster import CONFIG_ROOT
from kraken.metrics import Metrics

KIB = 1 << 10
#: 256 KiB/s, in bits, with a 64 KiB bucket (token_size is in bits too).
RATE_BYTES = 256 * KIB
BURST_BYTES = 64 * KIB


def limited(root: Path, egress: int = RATE_BYTES, ingress: int = RATE_BYTES) -> NamespaceBackendConfig:
    return build(NamespaceBackendConfig, {
        "namespace": ".*",
        "backend": {"file": {"root": str(root), "name_path": "identity"}},
        "bandwidth": {"enable": True, "egress_bits_per_sec": egress * 8, "ingress_bits_per_sec": ingress * 8,
                      "token_size": BURST_BYTES * 8},
    })


async def timed(transfer: Awaitable[object]) -> float:
    start = time.monotonic()
    await transfer
    return time.monotonic() - start


async def test_upload_and_download_of_n_bytes_take_at_least_n_over_the_rate(tmp_path: Path) -> None:
    router = await build_router([limited(tmp_path / "store")])
    backend = router.for_namespace("any")
    src, dst = tmp_path / "src", tmp_path / "dst"
    size = 320 * KIB
    src.write_bytes(os.urandom(size))
    try:
        # The bucket starts full (one burst), so the bound is (N - burst) / R.
        bound = (size - BURST_BYTES) / RATE_BYTES  # 1.0 s
        assert await timed(backend.upload("ns", "blob", src)) >= bound
        assert await timed(backend.download("ns", "blob", dst)) >= bound
        assert dst.read_bytes() == src.read_bytes()
    finally:
        await router.close()


async def test_concurrent_transfers_share_the_rate(tmp_path: Path) -> None:
    router = await build_router([limited(tmp_path / "store")])
    backend = router.for_namespace("any")
    data = os.urandom(128 * KIB)
    try:
        elapsed = await timed(asyncio.gather(*(backend.upload_bytes("ns", f"b{i}", data) for i in range(3))))
        assert elapsed >= (3 * len(data) - BURST_BYTES) / RATE_BYTES  # 1.25 s for the three together
        assert sorted(await backend.list("b")) == ["b0", "b1", "b2"]
    finally:
        await router.close()


async def test_the_ring_size_divides_the_rates(tmp_path: Path) -> None:
    router = await build_router([limited(tmp_path / "store")])
    backend = router.for_namespace("any")
    assert isinstance(backend, ThrottledBackend)
    try:
        router.adjust_bandwidth(4)
        assert backend.limiter.egress_bits_per_sec == RATE_BYTES * 8 / 4
        assert backend.limiter.ingress_bits_per_sec == RATE_BYTES * 8 / 4
        data = os.urandom(96 * KIB)
        # A quarter of the rate: (96 - 64) KiB at 64 KiB/s is 0.5 s (the whole rate: 0.125 s).
        assert await timed(backend.upload_bytes("ns", "blob", data)) >= 0.5
        router.adjust_bandwidth(1)  # from the configured rate, not compounding
        assert backend.limiter.egress_bits_per_sec == RATE_BYTES * 8
    finally:
        await router.close()


async def test_an_idle_bucket_saves_up_one_burst_only() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=100.0, burst=50, clock=lambda: now[0])
    await bucket.take(50)
    now[0] += 10.0  # idle for 10 s: 1000 bytes' worth, but the bucket holds at most 50
    # 100 bytes: 50 from the bucket, the other 50 are a debt slept off in real time (0.5 s).
    assert await timed(bucket.take(100)) >= 0.5


def test_a_direction_left_at_zero_is_unlimited() -> None:
    limiter = BandwidthLimiter(BandwidthConfig(enable=True, egress_bits_per_sec=8_000_000))
    assert limiter.egress_bits_per_sec == 8_000_000 and limiter.ingress_bits_per_sec is None


async def test_bandwidth_not_enabled_builds_the_plain_backend(tmp_path: Path) -> None:
    entry = build(NamespaceBackendConfig, {"namespace": ".*", "backend": {"file": {"root": str(tmp_path)}},
                                           "bandwidth": {"egress_bits_per_sec": 8}})
    router = await build_router([entry])
    try:
        assert not isinstance(router.for_namespace("x"), ThrottledBackend)
    finally:
        await router.close()


def test_kraken_bandwidth_keys_load_and_bad_values_fail() -> None:
    entry = build(NamespaceBackendConfig, {
        "namespace": ".*", "backend": {"file": {"root": "/tmp/x"}}, "must_ready": True,
        "bandwidth": {"enable": True, "egress_bits_per_sec": 1, "ingress_bits_per_sec": 2, "token_size": 8},
    })
    assert entry.must_ready and entry.bandwidth == BandwidthConfig(True, 1, 2, 8)
    with pytest.raises(ConfigError, match="bandwidth"):
        build(NamespaceBackendConfig, {"namespace": ".*", "backend": {"file": {"root": "/tmp/x"}},
                                       "bandwidth": {"egress_bits_per_sec": -1}})


async def test_a_missing_object_costs_no_ingress(tmp_path: Path) -> None:
    router = await build_router([limited(tmp_path / "store", ingress=1)])  # 1 byte/s: any wait would show
    try:
        with pytest.raises(BackendNotFound):
            await asyncio.wait_for(router.for_namespace("x").download_bytes("ns", "absent"), 1)
    finally:
        await router.close()


# ---- readiness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name_path", ["identity", "sharded_docker_blob", "docker_tag"])
async def test_default_probe_stats_a_name_the_layout_accepts(tmp_path: Path, name_path: str) -> None:
    router = await build_router([NamespaceBackendConfig(".*", BackendConfig(
        "file", FileBackendConfig(root=str(tmp_path), name_path=name_path)), must_ready=True)])
    try:
        await router.check_ready()
    finally:
        await router.close()


class _Unreachable(Backend):
    """A backend whose store never answers stat."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.asked: list[str] = []

    async def stat(self, namespace: str, name: str) -> BlobInfo | None:
        self.asked.append(name)
        if self.hang:
            await asyncio.Event().wait()  # a backend that never answers (the probe's timeout ends it)
        raise BackendError("connection refused")

    async def upload(self, namespace: str, name: str, src: Path) -> None:
        raise NotImplementedError

    async def upload_bytes(self, namespace: str, name: str, data: bytes) -> None:
        raise NotImplementedError

    async def download(self, namespace: str, name: str, dst: Path) -> None:
        raise NotImplementedError

    async def download_bytes(self, namespace: str, name: str) -> bytes:
        raise NotImplementedError

    async def list(self, prefix: str) -> list[str]:
        return []

    async def close(self) -> None:
        """Nothing to release."""


async def test_check_ready_names_every_failing_must_ready_backend() -> None:
    down, hung, ignored = _Unreachable(), _Unreachable(hang=True), _Unreachable()
    router = BackendRouter([Route(re.compile("library/.*"), down, "s3", must_ready=True),
                            Route(re.compile("team/.*"), hung, "gcs", must_ready=True),
                            Route(re.compile(".*"), ignored, "testfs")])
    with pytest.raises(BackendError) as e:
        await router.check_ready(timeout=0.2)
    assert str(e.value) == ("s3 backend for namespaces 'library/.*': BackendError: connection refused; "
                            "gcs backend for namespaces 'team/.*': no answer in time")
    assert down.asked == [READINESS_NAMES[0]] and ignored.asked == []


async def test_build_index_readiness_gives_up_on_a_hung_backend() -> None:
    """build-index probes every backend (none is optional there), each within the probe's
    timeout: a store that never answers makes it unready in seconds, not never."""
    hung = _Unreachable(hang=True)
    config = load_config(BuildIndexConfig, CONFIG_ROOT / "build-index" / "development.yaml")
    index = BuildIndex(config, Metrics("build-index"))
    index._running = SimpleNamespace(router=BackendRouter([Route(re.compile(".*"), hung, "s3")]))  # type: ignore[assignment]
    with pytest.raises(BackendError, match="s3 backend for namespaces '.*': no answer in time"):
        await asyncio.wait_for(index.readiness(), 10)
