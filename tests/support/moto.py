"""moto's S3 server (``moto_server``, a real HTTP server speaking the S3 API) for the tests of
the s3 backend: started on a free port, stopped after; any key id and secret are accepted
until :meth:`MotoServer.require_auth`."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from kraken.devcluster import free_port
from tests.support.waiting import wait_until

REGION = "us-east-1"
#: What every test client signs with (moto accepts anything while auth is off).
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


@dataclass
class MotoServer:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **credentials: str) -> Any:
        """A boto3 S3 client of this server (path-style, as the backend is configured here)."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=credentials.get("aws_access_key_id", ACCESS_KEY),
            aws_secret_access_key=credentials.get("aws_secret_access_key", SECRET_KEY),
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def create_bucket(self, prefix: str = "kraken") -> str:
        """A new empty bucket with a unique name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` under ``prefix``, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def require_auth(self, enabled: bool = True) -> None:
        """From now on, check every request's signature against moto's IAM (where no access key
        exists, so every request is refused with ``InvalidAccessKeyId``); False turns that off."""
        body = b"0" if enabled else b"inf"
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200, f"moto reset-auth answered {resp.status}"

    def backend_settings(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """An ``s3:`` backend section (plain data, as in a config file) for ``bucket`` here."""
        return {"region": REGION, "bucket": bucket, "endpoint": self.endpoint, "force_path_style": True,
                "username": "kraken", **extra}

    def user_credentials(self, bucket: str, user: str = "kraken") -> dict[str, str]:
        """A new IAM user allowed everything on ``bucket``, and an access key of it (what
        :meth:`require_auth` then accepts). ``s3:*``, not the narrower policy of
        docs/OPERATIONS.md: moto checks the API operation's name (``s3:HeadObject``,
        ``s3:UploadPart``) where AWS checks the IAM action (``s3:GetObject``, ``s3:PutObject``)."""
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["s3:*"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
        iam.put_user_policy(UserName=user, PolicyName="kraken", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}

    def kill(self) -> None:
        """SIGKILL: connections drop mid-request, as when the store's host dies."""
        self.process.kill()
        self.process.wait()

    def exited(self) -> str | None:
        return None if self.process.poll() is None else f"moto_server exited with {self.process.returncode}"

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


#: The ``auth:`` section matching :meth:`MotoServer.backend_settings` (Kraken's shape).
AUTH = {"s3": {"kraken": {"s3": {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}}}}


def start_moto(workdir: Path, attempts: int = 3) -> MotoServer:
    """``moto_server`` on a free port of 127.0.0.1, answering (retried on a port taken meanwhile)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        server = _launch(workdir, free_port())
        try:
            wait_until(lambda: _answers(server), 30, 0.1, message=f"moto_server on port {server.port}",  # noqa: B023
                       alive=server.exited, details=server.log_tail)
            return server
        except BaseException:
            server.stop()
            if attempt == attempts - 1 or "in use" not in server.log_tail():
                raise
    raise AssertionError("unreachable")


def moto_on_port(workdir: Path, port: int) -> MotoServer:
    """``moto_server`` on a given port (an example config's endpoint), answering."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = _launch(workdir, port)
    try:
        wait_until(lambda: _answers(server), 30, 0.1, message=f"moto_server on port {port}",
                   alive=server.exited, details=server.log_tail)
    except BaseException:
        server.stop()
        raise
    return server


def restart_moto(server: MotoServer, workdir: Path) -> MotoServer:
    """A new, empty moto_server on ``server``'s port (moto keeps nothing across a restart)."""
    server.stop()
    return moto_on_port(workdir, server.port)


def _launch(workdir: Path, port: int) -> MotoServer:
    log_path = workdir / f"moto-{port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    return MotoServer(port, process, log_path)


def _answers(server: MotoServer) -> bool:
    try:
        with urllib.request.urlopen(f"{server.endpoint}/moto-api/data.json", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextmanager
def running_moto(workdir: Path) -> Iterator[MotoServer]:
    server = start_moto(workdir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server per test module (tests use their own buckets, so they do not clash)."""
    with running_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server
