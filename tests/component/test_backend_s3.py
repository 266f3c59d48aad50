"""The s3 backend against a real moto server: the conformance suite, multipart upload, ranged
parallel download, paginated listing, failures, credentials and the event loop's latency."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from kraken.backend import BackendConfig, BackendError, BackendNotFound, create_backend
from kraken.backend.base import MAX_IN_MEMORY
from kraken.backend.config import kind_credentials
from kraken.backend.s3 import S3Backend
from kraken.backend.s3config import S3BackendConfig, static_credentials
from kraken.buildindex.config import BuildIndexConfig
from kraken.config import ConfigError, Secret, build, load_config
from kraken.core.digest import Digest
from kraken.devcluster import free_port
from kraken.http.config import HttpClientConfig
from kraken.origin.config import OriginConfig
from tests.support.backend_suite import BackendSuite, ConfigFactory, digest_hex, sha256_file, write_random_file
from tests.support.moto import ACCESS_KEY, AUTH, SECRET_KEY, MotoServer, moto, running_moto  # noqa: F401
from tests.support.stall import pool_threads, stalled_file
from tests.support.waiting import until

NS = "test/x"
MiB = 1 << 20
NO_RETRY = HttpClientConfig(connect_timeout=2, read_timeout=10, retries=0)


def s3_config(server: MotoServer, bucket: str, **extra: Any) -> S3BackendConfig:
    return build(S3BackendConfig, server.backend_settings(bucket, **extra))


def auth() -> dict[str, Any]:
    """The test credentials as the config loader builds them (Kraken's shape)."""
    return build(OriginConfig, {"auth": AUTH}).auth


def make(server: MotoServer, bucket: str, http: HttpClientConfig | None = None, **extra: Any) -> S3Backend:
    backend = create_backend(BackendConfig("s3", s3_config(server, bucket, **extra)), auth(), http)
    assert isinstance(backend, S3Backend)
    return backend


class TestS3Backend(BackendSuite):
    @pytest.fixture
    def backend_config(self, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> ConfigFactory:  # noqa: F811
        # The suite builds backends without an auth: section: boto3's chain finds these.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        bucket = moto.create_bucket()

        def config(root: str, name_path: str) -> BackendConfig:
            return BackendConfig("s3", s3_config(moto, bucket, root_directory=root, name_path=name_path,
                                                 username=""))

        return config


async def test_multipart_upload_and_ranged_download(moto: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    """A 13 MiB file goes up in three 5 MiB parts and comes back in 1 MiB ranges, byte for byte."""
    bucket = moto.create_bucket()
    backend = make(moto, bucket, root_directory="/kraken", name_path="sharded_docker_blob",
                   upload_part_size="5MB", download_part_size="1MB", upload_concurrency=2, download_concurrency=4)
    requests: list[str] = []
    backend.client.meta.events.register("before-call.s3", lambda model, **_: requests.append(model.name))
    try:
        src = tmp_path / "src"
        hexd = write_random_file(src, 13 * MiB + 123)
        await backend.upload(NS, hexd, src)
        assert requests.count("UploadPart") == 3 and "CompleteMultipartUpload" in requests
        key = f"kraken/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"
        assert moto.keys(bucket) == [key]
        head = moto.client().head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == 13 * MiB + 123 and head["ETag"].endswith('-3"')  # a multipart ETag
        # Every part carried a CRC32 for S3 to check it against on receipt.
        checked = moto.client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert checked.get("ChecksumCRC32"), checked
        requests.clear()
        await backend.download(NS, hexd, tmp_path / "dst")
        assert requests.count("GetObject") == 14
        assert sha256_file(tmp_path / "dst") == hexd
        assert sorted(os.listdir(tmp_path)) == ["dst", "src"]
        # Hashed while the 14 ranges land, four at a time, out of order.
        assert await backend.download_hashed(NS, hexd, tmp_path / "hashed") == Digest("sha256", hexd)
        assert sha256_file(tmp_path / "hashed") == hexd
    finally:
        await backend.close()


async def test_small_file_is_one_put(moto: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    backend = make(moto, moto.create_bucket(), upload_part_size="5MB")
    requests: list[str] = []
    backend.client.meta.events.register("before-call.s3", lambda model, **_: requests.append(model.name))
    try:
        (tmp_path / "src").write_bytes(os.urandom(5 * MiB))
        await backend.upload(NS, "blob", tmp_path / "src")
        assert requests == ["PutObject"]
        head = moto.client().head_object(Bucket=backend.bucket, Key="blob", ChecksumMode="ENABLED")
        assert head["ChecksumCRC32"], head
    finally:
        await backend.close()


async def test_failed_multipart_upload_is_aborted(moto: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    """A part that fails stops the upload and aborts it: no object, no parts left behind."""
    bucket = moto.create_bucket()
    backend = make(moto, bucket, NO_RETRY, upload_part_size="5MB", upload_concurrency=1)

    def fail_third_part(params: dict[str, Any], **_: Any) -> None:
        if params.get("PartNumber") == 3:
            raise ConnectionError("network gone")

    backend.client.meta.events.register("before-parameter-build.s3.UploadPart", fail_third_part)
    try:
        src = tmp_path / "src"
        write_random_file(src, 16 * MiB)
        with pytest.raises(BackendError, match="network gone"):
            await backend.upload(NS, "blob", src)
        assert moto.keys(bucket) == []
        assert moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        await backend.close()


async def test_download_fails_if_the_object_changes_meanwhile(moto: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    """Ranges ask for the ETag of the first HEAD: an overwrite between them is an error, not a mix."""
    bucket = moto.create_bucket()
    backend = make(moto, bucket, download_part_size="1MB", download_concurrency=1)
    await backend.upload_bytes(NS, "blob", os.urandom(3 * MiB))
    overwritten = False

    def overwrite(**_: Any) -> None:
        nonlocal overwritten
        if not overwritten:
            overwritten = True
            moto.client().put_object(Bucket=bucket, Key="blob", Body=os.urandom(3 * MiB))

    backend.client.meta.events.register("before-call.s3.GetObject", overwrite)
    try:
        with pytest.raises(BackendError, match="PreconditionFailed|412"):
            await backend.download(NS, "blob", tmp_path / "dst")
        assert os.listdir(tmp_path) == []
    finally:
        await backend.close()


async def test_listing_is_paginated(moto: MotoServer) -> None:  # noqa: F811
    backend = make(moto, moto.create_bucket(), list_max_keys=3, name_path="sharded_docker_blob")
    requests: list[str] = []
    backend.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: requests.append("list"))
    try:
        names = sorted(digest_hex(str(i).encode()) for i in range(10))
        await asyncio.gather(*(backend.upload_bytes(NS, name, b"x") for name in names))
        assert await backend.list("") == names
        assert len(requests) == 4
    finally:
        await backend.close()


async def test_download_bytes_refuses_an_object_too_large_for_memory(moto: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    """``download_bytes`` (tags, manifests) reads at most MAX_IN_MEMORY bytes: a larger object
    is an error, not a 17 MiB allocation."""
    backend = make(moto, moto.create_bucket())
    try:
        src = tmp_path / "src"
        write_random_file(src, MAX_IN_MEMORY + 1)
        await backend.upload(NS, "huge", src)
        with pytest.raises(BackendError, match="larger than"):
            await backend.download_bytes(NS, "huge")
        await backend.upload_bytes(NS, "small", b"tag")
        assert await backend.download_bytes(NS, "small") == b"tag"
    finally:
        await backend.close()


async def test_tags_share_the_distribution_layout(moto: MotoServer) -> None:  # noqa: F811
    bucket = moto.create_bucket()
    backend = make(moto, bucket, root_directory="/", name_path="docker_tag")
    try:
        await backend.upload_bytes(NS, "library/alpine:3.19", b"sha256:abc")
        assert moto.keys(bucket) == ["docker/registry/v2/repositories/library/alpine/_manifests/tags/3.19/current/link"]
        assert await backend.list("library/alpine:") == ["library/alpine:3.19"]
    finally:
        await backend.close()


async def test_unreachable_endpoint_is_backend_error_quickly(tmp_path: Path) -> None:
    config = build(S3BackendConfig, {"region": "us-east-1", "bucket": "b", "endpoint": f"127.0.0.1:{free_port()}",
                                     "disable_ssl": True, "username": "kraken"})
    backend = create_backend(BackendConfig("s3", config), auth(), HttpClientConfig(connect_timeout=2, retries=1))
    (tmp_path / "src").write_bytes(b"x")
    try:
        started = time.monotonic()
        for call in (backend.stat(NS, "blob"), backend.upload_bytes(NS, "blob", b"x"),
                     backend.upload(NS, "blob", tmp_path / "src"), backend.download(NS, "blob", tmp_path / "dst"),
                     backend.download_bytes(NS, "blob"), backend.list("")):
            with pytest.raises(BackendError, match=r"s3 backend \(bucket 'b' at 127\.0\.0\.1:\d+\)"):
                await call
        assert time.monotonic() - started < 20
        assert not (tmp_path / "dst").exists()
    finally:
        await backend.close()


async def test_missing_bucket_is_backend_error(moto: MotoServer) -> None:  # noqa: F811
    backend = make(moto, "no-such-bucket", NO_RETRY)
    try:
        with pytest.raises(BackendError, match="NoSuchBucket"):
            await backend.upload_bytes(NS, "blob", b"x")
        with pytest.raises(BackendError, match="NoSuchBucket"):
            await backend.list("")
    finally:
        await backend.close()


async def test_wrong_credentials_are_a_clear_backend_error(tmp_path: Path) -> None:
    """moto takes any key until told to check signatures; then an unknown key is refused."""
    with running_moto(tmp_path / "moto") as server:
        bucket = server.create_bucket()
        server.require_auth()
        backend = make(server, bucket, NO_RETRY)
        try:
            with pytest.raises(BackendError, match=f"bucket '{bucket}'.*of namespace 'test/x'.*InvalidAccessKeyId"):
                await backend.upload_bytes(NS, "blob", b"x")
            with pytest.raises(BackendError, match="access denied.*wrong key id or secret.*403"):
                await backend.stat(NS, "blob")
            with pytest.raises(BackendError, match="InvalidAccessKeyId"):
                await backend.list("")
        finally:
            await backend.close()


async def test_missing_object_is_not_found(moto: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    backend = make(moto, moto.create_bucket())
    try:
        with pytest.raises(BackendNotFound, match="not found in s3 bucket"):
            await backend.download(NS, "nothing", tmp_path / "dst")
        assert os.listdir(tmp_path) == []
    finally:
        await backend.close()


# ---- config and credentials ----------------------------------------------------------------

def test_kraken_config_keys_and_defaults() -> None:
    config = build(S3BackendConfig, {
        "region": "us-west-2", "bucket": "b", "endpoint": "s3.example.com", "disable_ssl": True,
        "force_path_style": True, "root_directory": "/kraken/", "name_path": "sharded_docker_blob",
        "username": "u", "upload_part_size": 8 << 20, "download_part_size": "16MB", "upload_concurrency": 4,
        "download_concurrency": 6, "list_max_keys": 100,
    })
    assert config.endpoint_url() == "http://s3.example.com"
    assert config.layout().path("ab" * 32).startswith("kraken/docker/registry/v2/blobs/sha256/ab/")
    defaults = build(S3BackendConfig, {"region": "r", "bucket": "b"})
    assert (defaults.upload_part_size, defaults.download_part_size) == (64 << 20, 64 << 20)
    assert (defaults.upload_concurrency, defaults.download_concurrency, defaults.list_max_keys) == (10, 10, 250)
    assert build(S3BackendConfig, {"region": "r", "bucket": "b", "endpoint": "h:1"}).endpoint_url() == "https://h:1"
    for bad in ({"upload_part_size": "1MB"}, {"list_max_keys": 5000}, {"root_directory": "/a/../b"},
                {"bucket": ""}, {"upload_concurrency": 0}):
        with pytest.raises(ConfigError):
            build(S3BackendConfig, {"region": "r", "bucket": "b", **bad})


@pytest.mark.parametrize("shape", ["kraken", "flat"])
async def test_credentials_from_the_auth_section(moto: MotoServer, shape: str) -> None:  # noqa: F811
    fields = {"aws_access_key_id": "AKIDSECRETVALUE", "aws_secret_access_key": "topsecret"}
    section = {"kraken": {"s3": fields} if shape == "kraken" else fields}
    auth_config = build(OriginConfig, {"auth": {"s3": section}}).auth
    assert "topsecret" not in repr(auth_config)
    backend = create_backend(BackendConfig("s3", s3_config(moto, moto.create_bucket())), auth_config)
    try:
        creds = backend.client._request_signer._credentials  # what boto3 signs with
        assert (creds.access_key, creds.secret_key) == ("AKIDSECRETVALUE", "topsecret")
        assert "topsecret" not in repr(backend.__dict__)
    finally:
        await backend.close()


def test_bad_credential_sets_fail_without_showing_values() -> None:
    config = BackendConfig("s3", build(S3BackendConfig, {"region": "r", "bucket": "b", "username": "u"}))
    for fields in ({"aws_access_key_id": "id-value"}, {"s3": {"aws_access_key_id": "id-value", "token": "x"}}):
        auth_config = build(OriginConfig, {"auth": {"s3": {"u": fields}}}).auth
        with pytest.raises(ConfigError, match=r"auth: s3: u: ") as raised:
            create_backend(config, auth_config)
        assert "id-value" not in str(raised.value)
    assert auth() == {"s3": {"kraken": {"s3": {"aws_access_key_id": Secret(ACCESS_KEY),
                                                "aws_secret_access_key": Secret(SECRET_KEY)}}}}


# ---- the event loop ------------------------------------------------------------------------

async def test_readiness_answers_while_every_transfer_thread_is_busy(
    moto: MotoServer, tmp_path: Path  # noqa: F811
) -> None:
    """Uploads hold both transfer threads (and one more waits): the readiness probe's HEAD
    runs on the metadata pool, so it answers at once instead of queueing behind them."""
    bucket = moto.create_bucket()
    backend = make(moto, bucket, upload_concurrency=1, download_concurrency=1)
    try:
        with stalled_file(tmp_path / "slow") as stall:
            uploads = [asyncio.create_task(backend.upload(NS, f"b{i}", stall.path)) for i in range(3)]
            await until(lambda: pool_threads(f"s3-{bucket}") == 2, 10, "uploads holding the transfer threads")
            await until(lambda: backend._transfers.queued == 1, 10, "the third upload queued behind them")
            try:
                await asyncio.wait_for(backend.ready(), 5)
                assert await asyncio.wait_for(backend.list(""), 5) == []
                assert not any(upload.done() for upload in uploads)
            finally:
                stall.release()  # a FIFO cannot be seeked: the uploads then fail, which is not the point
                await asyncio.gather(*uploads, return_exceptions=True)
    finally:
        await backend.close()


async def test_event_loop_stays_responsive_during_a_large_transfer(moto: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    """A 10 ms ticker keeps ticking on time while 256 MiB go up (multipart) and come back (ranges)."""
    size = int(os.environ.get("KRAKEN_S3_LOOP_TEST_MIB", "256")) * MiB
    backend = make(moto, moto.create_bucket(), upload_part_size="32MB", download_part_size="32MB",
                   upload_concurrency=4, download_concurrency=4)
    src = tmp_path / "src"
    hexd = await asyncio.to_thread(write_random_file, src, size)
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)  # the thing measured: how late a 10 ms timer fires
            lags.append(time.monotonic() - before - 0.01)

    tick = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        await backend.upload(NS, "big", src)
        uploaded = time.monotonic()
        await backend.download(NS, "big", tmp_path / "dst")
        done = time.monotonic()
    finally:
        tick.cancel()
        await backend.close()
    assert await asyncio.to_thread(sha256_file, tmp_path / "dst") == hexd
    lags.sort()
    print(f"\n{size >> 20} MiB: upload {uploaded - started:.2f}s, download {done - uploaded:.2f}s, "
          f"{len(lags)} ticks, loop lag p50 {lags[len(lags) // 2] * 1000:.1f} ms, "
          f"p99 {lags[int(len(lags) * 0.99)] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms")
    assert len(lags) > 10
    assert lags[-1] < 0.25, f"the event loop stalled for {lags[-1]:.3f}s"


def test_example_configs_load_with_their_secrets() -> None:
    """examples/backends/s3: Kraken's keys and auth: shape load as they are."""
    examples = Path(__file__).resolve().parents[2] / "examples" / "backends" / "s3"
    secrets = examples / "secrets.example.yaml"
    origin = load_config(OriginConfig, examples / "origin" / "s3.yaml", secrets=secrets)
    build_index = load_config(BuildIndexConfig, examples / "build-index" / "s3.yaml", secrets=secrets)
    for config, name_path in ((origin, "sharded_docker_blob"), (build_index, "docker_tag")):
        (entry,) = config.backends
        assert entry.backend.kind == "s3" and entry.backend.config.name_path == name_path
        assert entry.backend.config.bucket == "kraken-registry"
        assert "example-secret" not in repr(config)
    static = static_credentials(origin.backends[0].backend.config, kind_credentials(origin.auth, "s3"))
    assert static == {"aws_access_key_id": "AKIAEXAMPLEEXAMPLE", "aws_secret_access_key": "example-secret-access-key"}
