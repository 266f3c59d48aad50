import hashlib

import pytest

from kraken.core.digest import Digest, DigestError, hash_file
from kraken.core.sizes import parse_size


def test_parse_roundtrip_sha256_and_sha512():
    h256 = hashlib.sha256(b"x").hexdigest()
    h512 = hashlib.sha512(b"x").hexdigest()
    assert str(Digest.parse(f"sha256:{h256}")) == f"sha256:{h256}"
    assert Digest.parse(f"sha512:{h512}").algorithm == "sha512"


@pytest.mark.parametrize("bad", [
    "", "sha256", "sha256:", "md5:" + "a" * 32, "sha256:" + "A" * 64, "sha256:" + "a" * 63,
    "sha256:" + "g" * 64, "sha512:" + "a" * 64, "SHA256:" + "a" * 64, "sha256:" + "a" * 64 + "\n",
    "sha256:" + "a" * 63 + "\n", "sha512:" + "a" * 127 + "\n",
])
def test_parse_rejects_malformed(bad):
    with pytest.raises(DigestError):
        Digest.parse(bad)


async def test_hash_file_streams_large_file(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 40000 + b"tail"  # ~10 MB, not a multiple of the chunk size
    path.write_bytes(data)
    assert await hash_file(path) == Digest.of_bytes(data)
    assert await hash_file(path, "sha512") == Digest("sha512", hashlib.sha512(data).hexdigest())


@pytest.mark.parametrize("text,value", [
    (0, 0), (10, 10), ("10", 10), ("4MB", 4 << 20), ("4MiB", 4 << 20), ("1GB", 1 << 30),
    ("512KiB", 512 << 10), ("1.5GB", int(1.5 * (1 << 30))),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["4XB", "-1", "MB", True, -5])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)
