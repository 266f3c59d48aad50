"""Plain HTTP access to a registry (no proxy, no client binary), and the digests to check it;
pushes of blobs and small images through the registry API (tests and benchmarks)."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kraken.core.digest import Digest
from kraken.registry.manifest import OCI_MANIFEST


def sha256_bytes(data: bytes) -> str:
    """``sha256:<hex>`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` digest of a file, read in 4 MiB chunks (layers can be big)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return "sha256:" + h.hexdigest()



MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def http_request(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 30.0,
) -> HttpResponse:
    """One HTTP request that never uses a proxy; non-2xx statuses are returned, not raised.

    Header names in the result are lower-cased.
    """
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}), data=data)
    try:
        with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
            return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return HttpResponse(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def fetch_manifest(host: str, repo: str, reference: str, *, accept: str = MANIFEST_ACCEPT) -> tuple[bytes, str, str]:
    """GET a manifest from ``http://host``; return (bytes, digest header, content type).

    Raises ``RuntimeError`` on a non-200 answer.  The digest is the
    ``Docker-Content-Digest`` header (or the computed sha256 if it is absent).
    """
    r = http_request(f"http://{host}/v2/{repo}/manifests/{reference}", headers={"Accept": accept})
    if r.status != 200:
        raise RuntimeError(f"GET manifest {host}/{repo}:{reference} -> {r.status}: {r.body[:500]!r}")
    digest = r.headers.get("docker-content-digest") or sha256_bytes(r.body)
    return r.body, digest, r.headers.get("content-type", "")


def fetch_blob(host: str, repo: str, digest: str) -> bytes:
    """GET a blob from ``http://host`` into memory (use for small test blobs only)."""
    r = http_request(f"http://{host}/v2/{repo}/blobs/{digest}", timeout=120)
    if r.status != 200:
        raise RuntimeError(f"GET blob {host}/{repo}@{digest} -> {r.status}: {r.body[:500]!r}")
    return r.body


# --------------------------------------------------------------------------
# distribution registry (baseline "central registry")
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# pushes through the registry API
# --------------------------------------------------------------------------


def _upload_location(registry_url: str, repo: str) -> str:
    req = urllib.request.Request(f"{registry_url}/v2/{repo}/blobs/uploads/", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = registry_url + location
    return location + ("&" if "?" in location else "?")


def push_blob_file(registry_url: str, repo: str, path: Path, digest: Digest) -> None:
    """A monolithic upload (POST, then PUT of the whole file streamed from disk)."""
    location = _upload_location(registry_url, repo)
    with open(path, "rb") as f:
        req = urllib.request.Request(f"{location}digest={digest}", data=f, method="PUT",
                                     headers={"Content-Length": str(path.stat().st_size),
                                              "Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            assert resp.status == 201, resp.status


def push_blob_bytes(registry_url: str, repo: str, data: bytes) -> Digest:
    digest = Digest.of_bytes(data)
    req = urllib.request.Request(f"{_upload_location(registry_url, repo)}digest={digest}", data=data, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 201, resp.status
    return digest


def push_manifest(registry_url: str, repo: str, tag: str, config: Digest, config_size: int,
                  layer: Digest, layer_size: int) -> Digest:
    """An OCI image manifest naming ``config`` and one layer, tagged ``tag``."""
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config),
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(layer),
                    "size": layer_size}],
    }).encode()
    req = urllib.request.Request(f"{registry_url}/v2/{repo}/manifests/{tag}", data=body, method="PUT",
                                 headers={"Content-Type": OCI_MANIFEST})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 201, resp.status
    return Digest.of_bytes(body)


def push_padded_image(registry_url: str, repo: str, tag: str, manifest_size: int) -> Digest:
    """An image whose manifest is ``manifest_size`` bytes (an annotation pads it), tagged ``tag``."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = os.urandom(1024)
    config_digest, layer_digest = (
        push_blob_bytes(registry_url, repo, config),
        push_blob_bytes(registry_url, repo, layer),
    )
    doc = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config_digest),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(layer_digest),
                    "size": len(layer)}],
        "annotations": {"pad": ""},
    }
    doc["annotations"]["pad"] = "x" * (manifest_size - len(json.dumps(doc).encode()))
    body = json.dumps(doc).encode()
    assert len(body) == manifest_size
    req = urllib.request.Request(f"{registry_url}/v2/{repo}/manifests/{tag}", data=body, method="PUT",
                                 headers={"Content-Type": OCI_MANIFEST})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 201, resp.status
    return Digest.of_bytes(body)
