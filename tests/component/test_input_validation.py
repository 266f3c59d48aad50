"""Input validation shared by every component: strict digests, one repository-name grammar
for every namespace, and log lines that client-supplied bytes cannot forge."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kraken.log import KeyValueFormatter
from tests.support.origin import Origin, Testfs, random_blob

BAD_NAMESPACES = ["..%2F..%2Fetc", "a%2F..%2F..%2Fetc", "a%00b", "a%0Ab", "x" * 5000, "Upper/case"]


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("ns", BAD_NAMESPACES)
async def test_origin_refuses_invalid_namespaces_and_writes_nothing(
    origin: Origin, testfs: Testfs, tmp_path: Path, ns: str
) -> None:
    data, digest = random_blob(100)
    uploads = f"{origin.blob_url(digest, ns)}/uploads"
    root = tmp_path / "origin1"
    before = files(root)
    assert await origin.status("POST", uploads) == 400
    assert await origin.status("POST", f"{origin.url}/namespace/{ns}/uploads") == 400
    for method in ("GET", "HEAD"):
        assert await origin.status(method, origin.blob_url(digest, ns)) == 400
    assert await origin.status("GET", f"{origin.url}/internal/namespace/{ns}/blobs/{digest}/metainfo") == 400
    assert files(root) == before
    assert not any(p.name == "etc" for p in tmp_path.rglob("etc"))
    assert await testfs.read(digest) is None


async def test_origin_refuses_a_digest_with_a_trailing_newline(origin: Origin, tmp_path: Path) -> None:
    """``sha256:<63 hex>\\n`` used to pass Digest.parse ("$" matches before a final newline)."""
    bad = "sha256:" + "a" * 63 + "%0A"
    async with origin.session.post(f"{origin.url}/namespace/test%2Fx/blobs/{bad}/uploads") as resp:
        assert resp.status == 400 and "Location" not in resp.headers
    assert await origin.status("GET", f"{origin.url}/namespace/test%2Fx/blobs/{bad}") == 400
    assert files(tmp_path / "origin1" / "uploads") == []


def test_log_lines_escape_control_bytes_quotes_and_newlines() -> None:
    record = logging.LogRecord("origin", logging.INFO, __file__, 1, "refused\nFAKE %s", ("x\x1b[31m",), None)
    record.kraken_fields = {"ns": "a\x00b\nINFO forged=1", "q": 'say "hi"', "plain": "test/x", "empty": ""}
    line = KeyValueFormatter().format(record)
    assert "\n" not in line and "\x00" not in line and "\x1b" not in line
    assert line.endswith(
        r'origin refused\nFAKE x\x1b[31m ns="a\x00b\nINFO forged=1" q="say \"hi\"" plain=test/x empty=""'
    )
