"""CAStore: what enters the cache is verified, and failed or aborted uploads leave nothing."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kraken.core.digest import Digest
from kraken.store import cas as cas_module
from kraken.store import flush as flush_module
from kraken.store.cas import CAStore, DigestMismatch, UploadOffsetMismatch, UploadUnknown


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def cache_files(store: CAStore) -> list[Path]:
    return [p for p in store.cache_dir.rglob("*") if p.is_file()]


@pytest.fixture
def store(tmp_path: Path) -> CAStore:
    return CAStore(tmp_path / "cas")


async def test_upload_in_chunks_and_commit(store: CAStore) -> None:
    data = os.urandom(100_000)
    digest = Digest.of_bytes(data)
    uid = store.create_upload()
    assert await store.write(uid, chunks(data[:40_000]), offset=0) == 40_000
    assert await store.write(uid, chunks(data[40_000:70_000], data[70_000:]), offset=40_000) == 100_000
    path = await store.commit(uid, digest)
    assert path == store.path(digest) and path.read_bytes() == data
    assert store.size(digest) == len(data) and list(store.digests()) == [digest]
    assert list(store.upload_dir.iterdir()) == []
    assert not store.has_upload(uid)


async def test_chunk_at_the_wrong_offset_is_refused(store: CAStore) -> None:
    uid = store.create_upload()
    await store.write(uid, chunks(b"abc"))
    with pytest.raises(UploadOffsetMismatch):
        await store.write(uid, chunks(b"x"), offset=5)
    assert store.upload_size(uid) == 3


async def test_digest_mismatch_leaves_nothing(store: CAStore) -> None:
    uid = store.create_upload()
    await store.write(uid, chunks(b"not what was promised"))
    claimed = Digest.of_bytes(b"something else")
    with pytest.raises(DigestMismatch):
        await store.commit(uid, claimed)
    assert cache_files(store) == [] and list(store.upload_dir.iterdir()) == []
    assert not store.exists(claimed) and not store.has_upload(uid)


async def test_concurrent_commits_of_the_same_digest_both_succeed(store: CAStore) -> None:
    data = os.urandom(3 * (4 << 20) + 7)  # several write batches per upload
    digest = Digest.of_bytes(data)
    uids = [store.create_upload() for _ in range(4)]
    await asyncio.gather(*(store.write(uid, chunks(data[:5_000_000], data[5_000_000:])) for uid in uids))
    paths = await asyncio.gather(*(store.commit(uid, digest) for uid in uids))
    assert set(paths) == {store.path(digest)}
    assert store.path(digest).read_bytes() == data
    assert cache_files(store) == [store.path(digest)] and list(store.upload_dir.iterdir()) == []


async def test_aborted_upload_leaves_nothing_and_is_gone(store: CAStore) -> None:
    uid = store.create_upload()
    await store.write(uid, chunks(b"partial"))
    await store.abort(uid)
    assert list(store.upload_dir.iterdir()) == [] and cache_files(store) == []
    with pytest.raises(UploadUnknown):
        await store.write(uid, chunks(b"more"))
    with pytest.raises(UploadUnknown):
        await store.commit(uid, Digest.of_bytes(b"partial"))
    with pytest.raises(UploadUnknown):
        await store.abort(uid)


async def test_write_queued_behind_a_commit_does_not_resurrect_the_upload(store: CAStore) -> None:
    uid = store.create_upload()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"first"
        await release.wait()
        yield b"second"

    # Tasks take their first step in creation order, so the commit and then the late write
    # queue on the upload's lock while the first write holds it; release.set runs after them.
    writing = asyncio.create_task(store.write(uid, slow()))
    committing = asyncio.create_task(store.commit(uid, Digest.of_bytes(b"firstsecond")))
    late = asyncio.create_task(store.write(uid, chunks(b"late")))
    asyncio.get_running_loop().call_soon(release.set)
    assert await writing == len(b"firstsecond")
    assert (await committing).read_bytes() == b"firstsecond"
    with pytest.raises(UploadUnknown):
        await late
    assert list(store.upload_dir.iterdir()) == []


async def test_failed_stream_keeps_received_bytes_out_of_the_cache(store: CAStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"some bytes"
        raise ConnectionResetError("client went away")

    uid = store.create_upload()
    with pytest.raises(ConnectionResetError):
        await store.write(uid, broken())
    assert store.upload_size(uid) == len(b"some bytes")
    assert cache_files(store) == []


async def test_cleanup_spares_fresh_strays_and_removes_old_ones(store: CAStore) -> None:
    live = store.create_upload()
    fresh = store.upload_dir / "fresh-stray"
    old = store.upload_dir / "old-stray"
    fresh.touch()
    old.touch()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert store.cleanup_uploads(max_age=60) == 1
    assert sorted(p.name for p in store.upload_dir.iterdir()) == sorted([live, "fresh-stray"])


async def test_uploads_expire_by_idle_time_not_age(store: CAStore, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    uid = store.create_upload()
    now[0] += 3500  # a long, slow chunked upload: still sending an hour later
    await store.write(uid, chunks(b"late chunk"))
    now[0] += 100
    assert store.cleanup_uploads(max_age=3000) == 0 and store.has_upload(uid)
    now[0] += 3000
    assert store.cleanup_uploads(max_age=3000) == 1 and not store.has_upload(uid)


# ---- verified reads ------------------------------------------------------------------------


async def test_verified_path_hashes_once_for_concurrent_first_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new store (a restart) hashes a cached file on its first read, once however many
    readers ask together; later reads of the unchanged file only stat it."""
    data = os.urandom(1 << 20)
    digest = Digest.of_bytes(data)
    await CAStore(tmp_path / "cas").put_bytes(digest, data)
    store = CAStore(tmp_path / "cas")
    hashed = []
    real = cas_module.hash_file_sync
    monkeypatch.setattr(cas_module, "hash_file_sync", lambda *a: hashed.append(a) or real(*a))

    paths = await asyncio.gather(*(store.verified_path(digest) for _ in range(5)))
    assert paths == [store.path(digest)] * 5 and len(hashed) == 1
    store.touch(digest)
    assert await store.verified_path(digest) == store.path(digest) and len(hashed) == 1


async def test_a_file_hashed_then_renamed_in_is_adopted_only_if_unchanged(
    store: CAStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent hashes a download, then libtorrent renames it into the cache: its first read
    must not hash it again (a 1 GiB blob's first warm read took 1.1 s longer), unless the file
    changed after it was hashed."""
    hashed = []
    real = cas_module.hash_file_sync
    monkeypatch.setattr(cas_module, "hash_file_sync", lambda *a: hashed.append(a) or real(*a))
    for changed in (False, True):
        data = os.urandom(1 << 16)
        digest = Digest.of_bytes(data)
        downloaded = tmp_path / f"download-{changed}"
        downloaded.write_bytes(data)
        key = cas_module.file_key(downloaded)
        store.path(digest).parent.mkdir(parents=True, exist_ok=True)
        os.replace(downloaded, store.path(digest))
        if changed:
            store.path(digest).write_bytes(b"bad!" + data[4:])
        assert store.adopt_verified(digest, key) is not changed
        hashed.clear()
        assert (await store.verified_path(digest) is None) is changed
        assert len(hashed) == (1 if changed else 0)


async def test_verified_path_quarantines_a_changed_file_and_keeps_a_few(store: CAStore) -> None:
    for _ in range(cas_module.QUARANTINE_KEEP + 2):
        data = os.urandom(1000)
        digest = Digest.of_bytes(data)
        await store.put_bytes(digest, data)
        store.path(digest).write_bytes(b"not " + data[4:])
        assert await store.verified_path(digest) is None
        assert not store.exists(digest)
    assert len(list(store.quarantine_dir.iterdir())) == cas_module.QUARANTINE_KEEP


async def test_a_durable_upload_is_flushed_while_it_arrives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every FLUSH_EVERY bytes an fdatasync starts (one at a time); commit waits for it."""
    synced: list[int] = []

    def datasync(path: Path) -> None:
        synced.append(path.stat().st_size)

    monkeypatch.setattr(flush_module, "FLUSH_EVERY", 1000)
    monkeypatch.setattr(flush_module, "_datasync", datasync)
    monkeypatch.setattr(cas_module, "WRITE_BATCH", 1000)
    store = CAStore(tmp_path, durable=True)
    data = os.urandom(5000)
    uid = store.create_upload()
    await store.write(uid, chunks(*(data[i:i + 1000] for i in range(0, 5000, 1000))))
    await store.commit(uid, Digest.of_bytes(data))
    assert synced and all(size >= 1000 for size in synced)
    assert store.path(Digest.of_bytes(data)).read_bytes() == data


async def test_a_staging_store_is_not_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flush_module, "FLUSH_EVERY", 1)
    monkeypatch.setattr(flush_module, "_datasync", lambda path: pytest.fail("flushed"))
    store = CAStore(tmp_path, durable=False)
    uid = store.create_upload(hashed=False)
    await store.write(uid, chunks(b"abc", b"def"))
    path = await store.take_upload(uid)
    assert path.read_bytes() == b"abcdef" and not store.has_upload(uid)
    assert list(store.cache_dir.rglob("*")) == []
