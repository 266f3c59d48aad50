"""Components load only the libraries they use: the cloud backends' SDKs (boto3, botocore,
google-cloud-storage; 20-30 MiB resident together) only when such a backend is built."""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("boto3", "botocore", "google.cloud.storage")


@pytest.mark.parametrize("package", ["kraken.origin", "kraken.testfs", "kraken.buildindex", "kraken.agent",
                                     "kraken.proxy", "kraken.tracker"])
def test_a_component_without_cloud_backends_does_not_import_their_sdks(package: str) -> None:
    code = (f"import sys, {package}.server, {package}.__main__, kraken.backend.config; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_building_an_s3_backend_imports_boto3() -> None:
    code = ("import sys; from kraken.backend.registry import BACKENDS; "
            "from kraken.backend.base import BackendContext; "
            "from kraken.backend.s3config import S3BackendConfig; "
            "BACKENDS.get('s3').factory(S3BackendConfig(bucket='b', region='us-east-1'), BackendContext()); "
            "print('boto3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True"
