"""Plain HTTP access to a registry (no proxy, no client binary), and the digests to check it."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass


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
