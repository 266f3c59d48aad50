"""Unit tests of the registry protocol's pieces: names, errors, Accept merging, ranges, sessions."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kraken.core.digest import Digest
from kraken.registry.accept import accepts, merged_accept
from kraken.registry.errors import API_VERSION_HEADER, RegistryError
from kraken.registry.manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from kraken.registry.names import is_valid_name, is_valid_tag, parse_reference, validate_name
from kraken.registry.ranges import parse_read_range, parse_upload_range, upload_range_header
from kraken.registry.uploads import UploadSessions
from kraken.store.cas import CAStore
from tests.support.localstorage import LocalStorage


@pytest.mark.parametrize("name", [
    "a", "library/busybox", "test/x", "a.b_c-d/e__f", "a--b", "x" * 255, "0/1/2/3",
])
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [
    "", "..", "a/../b", "../etc", "/abs", "a/", "Upper", "a//b", "a b", "a:b", "-a", "a-", "a.", ".a",
    "a___b", "a%2Fb", "x" * 256, "é",
])
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(RegistryError) as e:
        validate_name(name)
    assert (e.value.code, e.value.status) == ("NAME_INVALID", 400)


def test_tags_and_references() -> None:
    assert is_valid_tag("latest") and is_valid_tag("v1.2.3-rc_1") and is_valid_tag("_x")
    assert not is_valid_tag(".x") and not is_valid_tag("-x") and not is_valid_tag("a" * 129) and not is_valid_tag("a/b")
    digest = Digest.of_bytes(b"x")
    assert parse_reference(str(digest)).digest == digest
    assert parse_reference("v1").tag == "v1"
    with pytest.raises(RegistryError) as e:
        parse_reference("sha256:nothex")
    assert e.value.code == "DIGEST_INVALID"
    with pytest.raises(RegistryError) as e:
        parse_reference("bad/tag")
    assert e.value.code == "TAG_INVALID"


def test_error_json_and_headers() -> None:
    resp = RegistryError("BLOB_UNKNOWN", detail={"digest": "sha256:abc"}).to_response()
    assert resp.status == 404
    assert resp.headers[API_VERSION_HEADER] == "registry/2.0"
    body = json.loads(resp.body)
    assert body == {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry",
                                "detail": {"digest": "sha256:abc"}}]}


def test_combined_errors_list_every_error() -> None:
    err = RegistryError.combine(RegistryError("MANIFEST_BLOB_UNKNOWN", detail={"digest": d}) for d in ("a", "b"))
    resp = err.to_response()
    assert resp.status == 400
    assert [e["detail"]["digest"] for e in json.loads(resp.body)["errors"]] == ["a", "b"]


@pytest.mark.parametrize("code,status", [
    ("BLOB_UPLOAD_UNKNOWN", 404), ("DIGEST_INVALID", 400), ("MANIFEST_UNKNOWN", 404), ("NAME_UNKNOWN", 404),
    ("RANGE_INVALID", 416), ("UNSUPPORTED", 405), ("UNAVAILABLE", 503), ("SIZE_INVALID", 400),
    ("TOOMANYREQUESTS", 429), ("UNKNOWN", 500),
])
def test_error_statuses(code: str, status: int) -> None:
    assert RegistryError(code).status == status


def test_accept_headers_are_merged() -> None:
    docker_style = [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, f"{OCI_INDEX}", "application/json; q=0.5"]
    merged = merged_accept(docker_style)
    assert merged == [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, "application/json"]
    assert merged_accept([f"{OCI_MANIFEST}, {DOCKER_MANIFEST};q=0.9, */*"]) == [OCI_MANIFEST, DOCKER_MANIFEST, "*/*"]
    assert merged_accept([f"{OCI_MANIFEST};q=0", DOCKER_MANIFEST]) == [DOCKER_MANIFEST]


def test_accepts() -> None:
    assert accepts([], OCI_MANIFEST)
    assert accepts(["*/*"], OCI_MANIFEST)
    assert accepts(["application/*"], OCI_MANIFEST)
    assert accepts([DOCKER_MANIFEST, OCI_MANIFEST], OCI_MANIFEST)
    assert not accepts([DOCKER_MANIFEST], OCI_MANIFEST)


def test_read_ranges() -> None:
    assert parse_read_range(None, 10) is None
    r = parse_read_range("bytes=2-5", 10)
    assert (r.start, r.end, r.length, r.content_range(), r.range_header()) == (2, 5, 4, "bytes 2-5/10", "bytes=2-5")
    assert (parse_read_range("bytes=7-", 10).start, parse_read_range("bytes=7-", 10).end) == (7, 9)
    assert (parse_read_range("bytes=-3", 10).start, parse_read_range("bytes=-3", 10).end) == (7, 9)
    assert parse_read_range("bytes=5-100", 10).end == 9
    assert parse_read_range("bytes=0-1,4-5", 10) is None  # multi-range: whole blob
    assert parse_read_range("items=0-1", 10) is None
    for bad in ("bytes=10-", "bytes=20-30", "bytes=-0"):
        with pytest.raises(RegistryError) as e:
            parse_read_range(bad, 10)
        assert e.value.status == 416 and e.value.headers["Content-Range"] == "bytes */10"


def test_upload_ranges() -> None:
    assert parse_upload_range("0-99") == (0, 99)
    assert parse_upload_range("bytes=100-199") == (100, 199)
    assert parse_upload_range("bytes 100-199/*") == (100, 199)
    for bad in ("", "abc", "5-1", "-5"):
        with pytest.raises(ValueError):
            parse_upload_range(bad)
    assert upload_range_header(0) == "0-0"
    assert upload_range_header(100) == "0-99"


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def test_sessions_are_bound_to_their_repository(tmp_path: Path) -> None:
    sessions = UploadSessions(CAStore(tmp_path), LocalStorage(tmp_path / "blobs"), ttl=3600)
    uid = sessions.start("a/b", "127.0.0.1")
    assert await sessions.append("a/b", uid, _chunks(b"12", b"34"), None) == 4
    with pytest.raises(RegistryError) as e:
        sessions.size("other", uid)
    assert e.value.code == "BLOB_UPLOAD_UNKNOWN"
    with pytest.raises(RegistryError) as e:
        await sessions.append("a/b", uid, _chunks(b"x"), 3)
    assert (e.value.code, e.value.headers["Range"]) == ("RANGE_INVALID", "0-3")


async def test_cleanup_removes_abandoned_sessions(tmp_path: Path) -> None:
    cas = CAStore(tmp_path)
    sessions = UploadSessions(cas, LocalStorage(tmp_path / "blobs"), ttl=0)
    uid = sessions.start("r", "127.0.0.1")
    await sessions.append("r", uid, _chunks(b"data"), None)
    (cas.upload_dir / "stray-from-a-crash").write_bytes(b"x")
    assert await sessions.cleanup() == 2
    assert not sessions.is_open(uid)
    assert list(cas.upload_dir.iterdir()) == []
    with pytest.raises(RegistryError) as e:
        sessions.size("r", uid)
    assert e.value.code == "BLOB_UPLOAD_UNKNOWN"


async def test_cleanup_keeps_young_sessions(tmp_path: Path) -> None:
    sessions = UploadSessions(CAStore(tmp_path), LocalStorage(tmp_path / "blobs"), ttl=3600)
    uid = sessions.start("r", "127.0.0.1")
    assert await sessions.cleanup() == 0
    assert sessions.is_open(uid)


async def test_streaming_writer_gets_every_byte_and_replaces_the_whole_file_put(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "blobs", writer_fails_after=-1)
    sessions = UploadSessions(CAStore(tmp_path / "cas"), storage, ttl=3600)
    data = [b"a" * 70_000, b"b" * 5, b"c" * 100_000]
    digest = Digest.of_bytes(b"".join(data))
    uid = sessions.start("r", "127.0.0.1")
    await sessions.append("r", uid, _chunks(*data[:2]), None)
    await sessions.append("r", uid, _chunks(data[2]), 70_005)
    await sessions.finish("r", uid, digest)
    assert [w.state for w in storage.writers] == ["committed"]
    assert storage.whole_file_puts == 0
    assert (storage.root / digest.hex).read_bytes() == b"".join(data)
    assert list((tmp_path / "cas" / "uploads").iterdir()) == []


async def test_failing_writer_falls_back_to_the_verified_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "blobs", writer_fails_after=50_000)
    sessions = UploadSessions(CAStore(tmp_path / "cas"), storage, ttl=3600)
    data = bytes(range(256)) * 1000
    uid = sessions.start("r", "127.0.0.1")
    await sessions.append("r", uid, _chunks(data[:40_000], data[40_000:]), None)
    await sessions.finish("r", uid, Digest.of_bytes(data))
    assert [w.state for w in storage.writers] == ["aborted"]
    assert storage.whole_file_puts == 1
    assert (storage.root / Digest.of_bytes(data).hex).read_bytes() == data
    assert not list(storage.root.glob(".stream-*"))


async def test_wrong_digest_aborts_the_writer_and_stores_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "blobs", writer_fails_after=-1)
    sessions = UploadSessions(CAStore(tmp_path / "cas"), storage, ttl=3600)
    uid = sessions.start("r", "127.0.0.1")
    await sessions.append("r", uid, _chunks(b"payload"), None)
    claimed = Digest.of_bytes(b"something else")
    with pytest.raises(RegistryError) as e:
        await sessions.finish("r", uid, claimed)
    assert e.value.code == "DIGEST_INVALID"
    assert [w.state for w in storage.writers] == ["aborted"]
    assert list(storage.root.iterdir()) == []
    assert storage.whole_file_puts == 0
