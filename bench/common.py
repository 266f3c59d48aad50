"""What the benchmarks share: blobs on disk, pushes, metrics scraping, timed curl fetches,
process memory and connections that never read."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import termios
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kraken.core.digest import Digest
from kraken.registry.manifest import OCI_MANIFEST
from tests.support.cluster import Herd
from tests.support.metrics import metric_sum

MiB = 1 << 20


def fresh_workdir(root: Path, name: str) -> Path:
    """``root/name``, emptied of what an earlier run of the benchmark left."""
    workdir = root / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return workdir


def random_blob_file(path: Path, size: int, chunk: int = 16 * MiB) -> Digest:
    """Write ``size`` random bytes to ``path`` in chunks (a GiB never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(chunk, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return Digest("sha256", h.hexdigest())


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


def place_in_distribution(data_dir: Path, repo: str, path: Path, digest: Digest) -> None:
    """Put ``path`` into a distribution registry's filesystem storage as blob ``digest`` of
    ``repo``, as a push would have left it (a hard link: no copy, no upload)."""
    v2 = data_dir / "docker" / "registry" / "v2"
    blob = v2 / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex / "data"
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.link(path, blob)
    link = v2 / "repositories" / repo / "_layers" / digest.algorithm / digest.hex / "link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text(str(digest))


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        return resp.read().decode()



def wait_idle(herd: Herd, timeout: float = 300.0) -> None:
    """Until the origin has no write-back pending, so one step's background work is not
    billed to the next."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = scrape(herd.origin.url)
        if metric_sum(text, "kraken_origin_writeback_pending") == 0 and "kraken_origin_writeback_pending" in text:
            return
        time.sleep(0.2)
    raise TimeoutError("the origin's write-back did not drain")


def wait_metainfo(base: str, repo: str, digest: Digest, timeout: float = 300.0) -> None:
    """Until ``base`` (an origin's /internal) serves the blob's metainfo; the origin then seeds it."""
    deadline = time.monotonic() + timeout
    url = f"{base}/namespace/{repo.replace('/', '%2F')}/blobs/{digest}/metainfo"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=30) as resp:
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"no metainfo for {digest}")


@dataclass
class CurlTiming:
    """One ``curl`` GET: seconds to the first body byte (the server has the whole blob ready)
    and to the last, and the bytes received."""

    first_byte: float
    total: float
    size: int


def start_curl(url: str, netns: str | None = None) -> subprocess.Popen:
    """Start a GET of ``url`` that discards the body (in network namespace ``netns``)."""
    argv = ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} %{size_download}", url]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_curl(proc: subprocess.Popen, timeout: float = 3600.0) -> CurlTiming:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed ({proc.returncode}): {err.strip()}")
    first, total, size = out.split()
    return CurlTiming(float(first), float(total), int(size))


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 8 samples is the slowest one)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def rss_mib(pid: int) -> tuple[float, float]:
    """A process's resident memory now and at its peak (``VmRSS``, ``VmHWM``), in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


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


def slow_readers(host: str, port: int, path: str, count: int, accept: str = OCI_MANIFEST) -> list[socket.socket]:
    """``count`` connections that each GET ``path`` and read the response head, then nothing."""
    readers = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=60)
            readers.append(sock)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\n\r\n".encode())
        for sock in readers:
            head = sock.recv(1024)
            assert head.startswith(b"HTTP/1.1 200"), head[:100]
        _wait_stalled(readers)
    except BaseException:
        for sock in readers:
            sock.close()
        raise
    return readers


def _wait_stalled(readers: list[socket.socket], timeout: float = 60.0, polls: int = 5) -> None:
    """Until the bytes waiting in the readers' receive queues stop growing (``polls`` checks
    0.1 s apart agree): the server has sent what the sockets take and is stuck on the rest."""
    deadline = time.monotonic() + timeout
    last, same = -1, 0
    while same < polls:
        queued = sum(struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0] for s in readers)
        same = same + 1 if queued == last else 0
        last = queued
        if time.monotonic() > deadline:
            raise TimeoutError("the server kept sending to readers that read nothing")
        time.sleep(0.1)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sent before it closed the connection (a reset counts as closed)."""
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)
