"""The origin's write-back to S3 when S3 is not there or refuses it: the push is acknowledged
anyway, every failed attempt names the backend and the namespace, and the write-back is retried
until the bucket holds the blob. An origin and a moto_server, both real processes.

Backend down: moto is SIGKILLed while the origin's multipart upload is under way (its first
part is in moto's log, the completion is not), then started again on the same port. moto has no
persistence (its request recorder cannot replay multipart uploads, whose ids change), so the
new server starts empty and the test recreates the bucket, the one thing an S3 outage does not
lose; what it checks is what the origin owns: the interrupted upload and the ones queued during
the outage all reach the new server whole, with nothing pushed again.

Wrong credentials: moto checks signatures (``/moto-api/reset-auth``) against an IAM user's key;
the origin signs with the right key id and a wrong secret from its ``--secrets`` file, then is
restarted with the secret fixed, on the same store: the queued write-back resumes and succeeds.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kraken.core.digest import Digest
from kraken.devcluster import CONFIG_ROOT, Process, Supervisor, free_port, write_overlay
from kraken.http.client import create_client
from kraken.http.config import HttpClientConfig
from kraken.origin.client import OriginClient
from tests.support.metrics import metric
from tests.support.moto import AUTH, MotoServer, restart_moto, running_moto
from tests.support.origin import MB, NS, random_blob
from tests.support.waiting import until

BACKEND = "backend=\"s3 backend for namespaces '.*'\""


def blob_key(digest: Digest) -> str:
    return f"docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data"


@dataclass
class S3Origin:
    process: Process
    client: OriginClient
    session: aiohttp.ClientSession

    async def metric(self, name: str) -> float:
        async with self.session.get(f"{self.process.url}/metrics") as resp:
            return metric(await resp.text(), name, 0.0)

    def failures(self) -> list[str]:
        """This run's ``write-back failed`` log lines."""
        with open(self.process.log_path, "rb") as f:
            f.seek(self.process.log_offset)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if "write-back failed, will retry" in line]


@pytest.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[Supervisor]:
    sup = Supervisor(tmp_path)
    try:
        yield sup
    finally:
        await asyncio.to_thread(sup.stop_all)


@pytest.fixture
async def http() -> AsyncIterator[tuple[aiohttp.ClientSession, aiohttp.ClientSession]]:
    """A plain session (metrics) and Kraken's client (the origin's API)."""
    client = create_client(HttpClientConfig(connect_timeout=2, read_timeout=30))
    async with aiohttp.ClientSession() as session:
        try:
            yield session, client
        finally:
            await client.close()


async def start_origin(sup: Supervisor, http: tuple[aiohttp.ClientSession, aiohttp.ClientSession],
                       tmp_path: Path, moto: MotoServer, bucket: str, secrets: dict[str, Any] | None = None,
                       port: int = 0) -> S3Origin:
    """An origin process writing ``.*`` back to ``bucket``: 5 MB parts one at a time, quick
    retries, no retries inside a request (each failure is one attempt). Credentials from the
    ``--secrets`` file ``secrets`` when given, else moto's test ones in the config."""
    port = port or free_port()
    addr = f"127.0.0.1:{port}"
    s3 = moto.backend_settings(bucket, root_directory="/", name_path="sharded_docker_blob",
                               upload_part_size="5MB", upload_concurrency=1)
    config = write_overlay(tmp_path / "origin.yaml", CONFIG_ROOT / "origin" / "development.yaml", {
        "store": {"root": str(tmp_path / "origin")},
        "ring": {"hosts": [addr], "max_replica": 1},
        "p2p": {"listen": {"host": "127.0.0.1", "port": free_port()}},
        "backends": [{"namespace": ".*", "backend": {"s3": s3}}],
        "writeback": {"retry_interval": "200ms", "max_retry_interval": "1s"},
        "http_client": {"connect_timeout": "1s", "read_timeout": "5s", "retries": 0},
        **({} if secrets is not None else {"auth": AUTH}),
    })
    extra = ["--host", "127.0.0.1", "--advertise", addr]
    if secrets is not None:
        secrets_file = tmp_path / "secrets.yaml"
        secrets_file.write_text(yaml.safe_dump(secrets))
        secrets_file.chmod(0o600)
        extra += ["--secrets", str(secrets_file)]
    process = Process("origin", "origin", port, config, sup.log_dir / "origin.log", extra_args=extra)
    await asyncio.to_thread(sup.start, process)
    session, client = http
    return S3Origin(process, OriginClient(addr, client, poll_timeout=30), session)


async def _refusal(session: aiohttp.ClientSession, url: str) -> str | None:
    """The body of a 503 to GET ``url`` (None while the origin still answers 202: fetching)."""
    async with session.get(url) as resp:
        return await resp.text() if resp.status == 503 else None


async def positive(value: Any) -> bool:
    return bool(await value > 0)


async def zero(value: Any) -> bool:
    return bool(await value == 0)


async def test_moto_killed_during_write_back_is_retried_and_nothing_is_lost(
    supervisor: Supervisor, http: tuple[aiohttp.ClientSession, aiohttp.ClientSession], tmp_path: Path,
) -> None:
    with running_moto(tmp_path / "moto") as first:
        bucket = first.create_bucket()
        origin = await start_origin(supervisor, http, tmp_path, first, bucket)
        big, big_digest = random_blob(64 * MB + 3)  # thirteen 5 MB parts, one at a time
        await origin.client.upload_bytes(NS, big_digest, big)  # acknowledged before the write-back

        started = f"POST /{bucket}/{blob_key(big_digest)}?uploads"
        await until(lambda: started in first.log_path.read_text(), timeout=60, interval=0.01,
                    what="the multipart upload to start")
        first.kill()
        completed = f"POST /{bucket}/{blob_key(big_digest)}?uploadId="
        assert completed not in first.log_path.read_text(), "the upload completed before moto was killed"

        await until(lambda: positive(origin.metric("kraken_origin_writeback_failures_total")),
                    timeout=60, what="a failed write-back attempt")
        small, small_digest = random_blob(300_000)
        await origin.client.upload_bytes(NS, small_digest, small)  # a push while S3 is down succeeds
        failure = origin.failures()[0]
        assert f"namespace={NS}" in failure and BACKEND in failure, failure

        second = await asyncio.to_thread(restart_moto, first, tmp_path / "moto")
        try:
            second.client().create_bucket(Bucket=bucket)
            s3 = second.client()
            for data, digest in ((big, big_digest), (small, small_digest)):
                key = blob_key(digest)
                await until(lambda: asyncio.to_thread(second.keys, bucket, key), timeout=60,  # noqa: B023
                            what=f"{digest} written back after the restart")
                assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
            await until(lambda: zero(origin.metric("kraken_origin_writeback_pending")), timeout=30,
                        what="no write-back pending")
        finally:
            second.stop()


async def test_wrong_credentials_fail_the_write_back_by_name_and_the_push_still_succeeds(
    supervisor: Supervisor, http: tuple[aiohttp.ClientSession, aiohttp.ClientSession], tmp_path: Path,
) -> None:
    with running_moto(tmp_path / "moto") as moto:
        bucket = moto.create_bucket()
        good = moto.user_credentials(bucket)
        moto.require_auth()
        wrong = {**good, "aws_secret_access_key": "not-the-secret"}
        origin = await start_origin(supervisor, http, tmp_path, moto, bucket,
                                    secrets={"auth": {"s3": {"kraken": {"s3": wrong}}}})
        data, digest = random_blob(6 * MB)
        await origin.client.upload_bytes(NS, digest, data)  # the push succeeds
        assert await origin.client.read_bytes(NS, digest) == data

        await until(lambda: origin.failures() or None, timeout=60, what="a refused write-back")
        failure = origin.failures()[0]
        assert f"namespace={NS}" in failure and BACKEND in failure, failure
        # The write-back's first call is a HEAD, whose 403 has no body: the error says what it means.
        assert f"s3 backend (bucket '{bucket}'" in failure and "wrong key id or secret" in failure, failure
        assert "not-the-secret" not in origin.process.log_path.read_text()
        # A blob the origin lacks cannot be fetched either: the reader is told why, by name.
        session, _ = http
        _, absent = random_blob(1000)
        url = f"{origin.process.url}/namespace/{NS.replace('/', '%2F')}/blobs/{absent}"
        reason = await until(lambda: _refusal(session, url), timeout=30, what="a 503 for a blob the origin lacks")
        assert f"s3 backend (bucket '{bucket}'" in reason and f"namespace '{NS}'" in reason, reason
        assert "wrong key id or secret" in reason, reason

        await asyncio.to_thread(supervisor.stop, "origin")
        fixed = await start_origin(supervisor, http, tmp_path, moto, bucket, port=origin.process.port,
                                   secrets={"auth": {"s3": {"kraken": {"s3": good}}}})
        s3 = moto.client(**good)
        key = blob_key(digest)

        def landed() -> bool:
            return any(o["Key"] == key for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))

        await until(lambda: asyncio.to_thread(landed), timeout=60, what="the write-back with the fixed secret")
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        await until(lambda: zero(fixed.metric("kraken_origin_writeback_pending")), timeout=30,
                    what="no write-back pending")

