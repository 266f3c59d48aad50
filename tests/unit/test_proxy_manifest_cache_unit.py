"""The proxy's manifest cache: one fetch per digest however many readers miss at once."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kraken.core.digest import Digest
from kraken.proxy.manifest_cache import ManifestCache, ManifestMissing
from kraken.store.cas import DigestMismatch
from tests.support.waiting import until


async def test_concurrent_misses_share_one_fetch_and_all_read_the_manifest(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path / "manifests", 1 << 20)
    await cache.start()
    body = b'{"schemaVersion": 2}'
    digest = Digest.of_bytes(body)
    gate, fetches = asyncio.Event(), []

    async def fetch() -> AsyncIterator[bytes]:
        fetches.append(1)
        await gate.wait()
        yield body

    readers = [asyncio.create_task(cache.open(digest, fetch)) for _ in range(5)]
    await until(lambda: fetches, what="the fetch to start")
    gate.set()
    files = await asyncio.gather(*readers)
    try:
        assert [f.read() for f in files if f is not None] == [body] * 5
    finally:
        for f in files:
            if f is not None:
                f.close()
    assert len(fetches) == 1


async def test_a_manifest_missing_upstream_is_none(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path / "manifests", 1 << 20)
    await cache.start()

    async def missing() -> AsyncIterator[bytes]:
        raise ManifestMissing()
        yield b""  # pragma: no cover - makes this a generator

    assert await cache.open(Digest.of_bytes(b"x"), missing) is None


async def test_a_wrong_body_is_refused_and_not_cached(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path / "manifests", 1 << 20)
    await cache.start()
    digest = Digest.of_bytes(b"right")

    async def wrong() -> AsyncIterator[bytes]:
        yield b"wrong"

    with pytest.raises(DigestMismatch):
        await cache.open(digest, wrong)
    assert not cache.cas.exists(digest)
