"""The proxy's on-disk manifest cache (kraken/proxy/manifest_cache.py), on real processes.

A manifest read from its origin once is served from the proxy's disk afterwards (the
origin's access log sees no second read); the cache keeps at most ``manifest_cache_size``
bytes, the least recently read evicted; an evicted manifest is read from the origin again.
"""
from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kraken.core.digest import Digest
from kraken.registry.manifest import OCI_MANIFEST
from tests.support.cluster import Herd, start_herd
from tests.support.registry_http import push_padded_image
from tests.support.waiting import wait_until

MANIFEST_SIZE = 3000
CACHE_SIZE = 8000  # two manifests fit, three do not
REPO = "cache/manifests"


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    h = start_herd(Path(tmp_path_factory.mktemp("herd")), overrides={"proxy": {"manifest_cache_size": CACHE_SIZE}})
    try:
        yield h
    finally:
        h.stop()


def _pull(herd: Herd, tag: str) -> Digest:
    req = urllib.request.Request(f"{herd.proxy.url}/v2/{REPO}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    with urllib.request.urlopen(req, timeout=60) as resp:
        digest = Digest.of_bytes(resp.read())
        assert resp.headers["Docker-Content-Digest"] == str(digest)
    return digest


def _origin_reads(herd: Herd, digest: Digest) -> int:
    """GETs of the blob ``digest`` in the origin's access log."""
    log = herd.origin.log_path.read_text(errors="replace")
    return len(re.findall(rf"method=GET path=\S*/blobs/{digest}\s", log))


def _cached(herd: Herd) -> set[str]:
    return {p.name for p in herd.workdir.rglob("*") if p.is_file() and "/manifests/cache/" in str(p)}


def test_manifests_are_served_from_the_proxy_disk_and_evicted_least_recently_read_first(herd: Herd) -> None:
    digests = [push_padded_image(herd.proxy.url, REPO, f"v{i}", MANIFEST_SIZE) for i in range(3)]
    first, second, third = digests
    assert [_pull(herd, "v0"), _pull(herd, "v1")] == [first, second]
    reads = _origin_reads(herd, first)
    assert _pull(herd, "v0") == first
    assert _origin_reads(herd, first) == reads  # from the proxy's disk
    assert _cached(herd) == {first.hex, second.hex}

    assert _pull(herd, "v2") == third  # second was read least recently: it goes
    assert _cached(herd) == {first.hex, third.hex}

    reads = _origin_reads(herd, second)
    assert _pull(herd, "v1") == second
    # Read from the origin again: its access log line is written once the response is sent,
    # which may be just after the client has the body.
    wait_until(lambda: _origin_reads(herd, second) == reads + 1, 10, message="the origin logs a second read")
    assert _cached(herd) == {third.hex, second.hex}
