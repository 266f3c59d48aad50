"""Deterministic, seeded OCI image-layout generator (stdlib only).

Why this exists: the machines this project runs on have no access to any
public image registry, yet the end-to-end tests and benchmarks need real,
multi-layer images of controlled size that docker, podman, skopeo, containerd
and umoci all accept.  This module writes such images as an OCI image layout
(``oci-layout`` + ``index.json`` + ``blobs/sha256/...``) that ``skopeo copy
oci:<dir>:<tag> docker://...`` can push byte for byte.

Design choices and the reasons behind them:

* **Seeded randomness.**  Layer content comes from ``random.Random`` seeded by
  ``(seed, layer index)``, so the same arguments always produce the same
  digests (reproducible tests), while a new seed produces new digests (which
  defeats blob caches and cross-repo mounts in benchmarks).  The tag is *not*
  part of the seed: two tags generated with the same seed and sizes are the
  same image.
* **Streaming.**  A layer is never held in memory: random bytes are produced in
  4 MiB chunks, hashed (uncompressed digest = ``diff_id``), fed to a zlib
  compressor producing a single gzip member (level 1, because random data does
  not compress and level 1 is the cheapest real gzip), hashed again
  (compressed digest = blob digest) and written to disk.  Compression is
  split pigz-style into independently deflated pieces on a thread pool (see
  ``_LayerSink``), since zlib alone manages only ~35 MB/s on random data.
* **Gzip by default.**  Clients push ``tar+gzip`` layers unchanged, so the
  digests in the registry equal the generated ones.  A plain ``tar`` layer
  would be re-compressed (and re-digested) by skopeo/podman on push.
* **Parallelism.**  ``zlib`` and ``hashlib`` release the GIL on big
  buffers, so layers are generated concurrently and each layer's deflate
  work is spread over a thread pool; on a 2-core machine this roughly halves
  wall time, also for a single big layer.
* **Deterministic bytes everywhere.**  Fixed tar header (mtime, uid, mode), a
  gzip header with mtime 0 and no file name, and canonical JSON (sorted keys,
  compact separators) make the manifest digest a pure function of the inputs
  (and of the host architecture, which goes into the config so that daemons
  accept the image for the local platform).

CLI::

    python -m tests.support.ocigen OUTDIR TAG SIZE_MB... [--seed N] [--no-gzip]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import hashlib
import json
import os
import platform
import random
import struct
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "GeneratedImage",
    "LayerInfo",
    "generate_oci_layout",
    "main",
    "MEDIA_TYPE_MANIFEST",
    "MEDIA_TYPE_INDEX",
    "MEDIA_TYPE_CONFIG",
    "MEDIA_TYPE_LAYER_GZIP",
    "MEDIA_TYPE_LAYER_TAR",
    "REF_NAME_ANNOTATION",
]

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

#: Size of one random chunk.  Big enough that per-call overhead (Python,
#: zlib, hashlib, write syscalls) is negligible, small enough to keep memory
#: flat even with several layers generated in parallel.
CHUNK_SIZE = 4 * 1024 * 1024
#: Fixed timestamp used in tar headers and the image config.  A constant keeps
#: digests reproducible; 2000-01-01 avoids tools that treat mtime 0 specially.
FIXED_EPOCH = 946_684_800
FIXED_CREATED = "2000-01-01T00:00:00Z"
_TAR_BLOCK = 512
_GZIP_LEVEL = 1

_ARCH_MAP = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "i386": "386",
    "i686": "386",
}


def host_architecture() -> str:
    """Return the OCI/Go name of this machine's CPU architecture.

    Daemons (dockerd, containerd, podman) refuse or warn about images built
    for another platform, so the config must name the local one.
    """
    machine = platform.machine().lower()
    return _ARCH_MAP.get(machine, machine or "amd64")


@dataclass
class LayerInfo:
    """Digests and sizes of one generated layer blob."""

    digest: str
    """``sha256:<hex>`` of the blob as stored (compressed if gzip)."""
    diff_id: str
    """``sha256:<hex>`` of the uncompressed tar (goes into rootfs.diff_ids)."""
    size: int
    """Size in bytes of the stored blob."""
    uncompressed_size: int
    """Size in bytes of the uncompressed tar stream."""
    media_type: str


@dataclass
class GeneratedImage:
    """Everything a test needs to know about one generated image.

    The digests let a test compare what a registry or client returns with what
    was generated, without re-reading the layout.
    """

    layout: Path
    """The OCI image-layout directory."""
    tag: str
    """Tag recorded in index.json as ``org.opencontainers.image.ref.name``."""
    manifest_digest: str
    manifest: bytes
    """Exact manifest bytes (their sha256 is ``manifest_digest``)."""
    config_digest: str
    config: bytes
    layer_digests: list[str]
    diff_ids: list[str]
    layer_sizes: list[int]
    """Stored (compressed) size of each layer blob, in bytes."""
    uncompressed_sizes: list[int]
    layer_media_type: str
    seed: int
    oci_ref: str = field(init=False)
    """``oci:<layout>:<tag>``, the skopeo/podman source reference."""

    def __post_init__(self) -> None:
        self.oci_ref = f"oci:{self.layout}:{self.tag}"

    @property
    def blob_digests(self) -> list[str]:
        """Config digest followed by the layer digests (all blobs the manifest references)."""
        return [self.config_digest, *self.layer_digests]

    def p2p_layer_bytes(self, small_blob_max: int) -> int:
        """Bytes of the layers an agent downloads over P2P: those larger than its
        ``download.small_blob_max`` (smaller blobs come over HTTP from an origin)."""
        return sum(size for size in self.layer_sizes if size > small_blob_max)

    @property
    def total_size(self) -> int:
        """Bytes a client must transfer for manifest + config + layers."""
        return len(self.manifest) + len(self.config) + sum(self.layer_sizes)

    def blob_path(self, digest: str) -> Path:
        """Path of a blob (``sha256:<hex>``) inside the layout."""
        algo, _, hexpart = digest.partition(":")
        return self.layout / "blobs" / algo / hexpart

    def manifest_json(self) -> dict[str, Any]:
        """The manifest parsed as JSON."""
        return dict(json.loads(self.manifest))

    def config_json(self) -> dict[str, Any]:
        """The image config parsed as JSON."""
        return dict(json.loads(self.config))


def _canonical_json(obj: Any) -> bytes:
    """Serialize deterministically (sorted keys, no whitespace) so digests are stable."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _tar_header(name: str, size: int, *, is_dir: bool = False) -> bytes:
    """Build one deterministic tar header (PAX format, so sizes > 8 GiB work)."""
    info = tarfile.TarInfo(name)
    info.size = 0 if is_dir else size
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.mtime = FIXED_EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


class _LayerSink:
    """Receives the uncompressed tar stream; hashes it, compresses and writes it.

    Keeping the stages in one object means each chunk is touched once per
    stage and the layer never exists in memory as a whole.

    Gzip is produced the way pigz does it, because single-threaded zlib level
    1 manages only ~35 MB/s on random data: the stream is cut into fixed
    ``CHUNK_SIZE`` pieces, each piece is raw-deflated independently on a thread
    pool and ended with a ``Z_SYNC_FLUSH`` (byte-aligned, non-final block), and
    the pieces are concatenated in order behind a fixed gzip header, followed
    by an empty final block and the CRC32/ISIZE trailer.  The result is one
    ordinary gzip member (every gzip reader accepts it) whose bytes depend only
    on the input, so digests stay deterministic.  At most ``max_inflight``
    pieces are in flight, which bounds memory.
    """

    # 10-byte gzip header: magic, CM=deflate, no flags, mtime 0, XFL=4 (fastest), OS=255 (unknown).
    _GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
    # An empty final deflate block (fixed Huffman, BFINAL=1): terminates the stream.
    _DEFLATE_END = b"\x03\x00"

    def __init__(
        self,
        out: BinaryIO,
        gzip_layers: bool,
        pool: concurrent.futures.Executor | None,
        max_inflight: int,
    ) -> None:
        self._out = out
        self._gzip = gzip_layers
        self._pool = pool
        self._max_inflight = max(1, max_inflight)
        self._raw_hash = hashlib.sha256()
        self._blob_hash = hashlib.sha256()
        self._crc = 0
        self._pending = bytearray()
        self._inflight: collections.deque[concurrent.futures.Future[bytes]] = collections.deque()
        self.raw_size = 0
        self.blob_size = 0
        if gzip_layers:
            self._emit(self._GZIP_HEADER)

    def _emit(self, data: bytes) -> None:
        if data:
            self._blob_hash.update(data)
            self.blob_size += len(data)
            self._out.write(data)

    def _submit(self, piece: bytes) -> None:
        if self._pool is None:
            self._emit(_deflate_piece(piece))
            return
        self._inflight.append(self._pool.submit(_deflate_piece, piece))
        while len(self._inflight) > self._max_inflight:
            self._emit(self._inflight.popleft().result())

    def write(self, data: bytes) -> None:
        self._raw_hash.update(data)
        self.raw_size += len(data)
        if not self._gzip:
            self._emit(data)
            return
        self._crc = zlib.crc32(data, self._crc)
        if not self._pending and len(data) == CHUNK_SIZE:
            self._submit(data)  # common case: a whole random chunk, no copy
            return
        self._pending += data
        while len(self._pending) >= CHUNK_SIZE:
            self._submit(bytes(self._pending[:CHUNK_SIZE]))
            del self._pending[:CHUNK_SIZE]

    def finish(self) -> tuple[str, str]:
        """Flush everything; return (blob digest, diff_id)."""
        if self._gzip:
            if self._pending:
                self._submit(bytes(self._pending))
                self._pending.clear()
            while self._inflight:
                self._emit(self._inflight.popleft().result())
            self._emit(self._DEFLATE_END)
            self._emit(struct.pack("<II", self._crc & 0xFFFFFFFF, self.raw_size & 0xFFFFFFFF))
        diff_id = "sha256:" + self._raw_hash.hexdigest()
        digest = "sha256:" + self._blob_hash.hexdigest()
        return digest, diff_id

    def abort(self) -> None:
        """Cancel queued pieces after an error so the pool is not left busy."""
        for fut in self._inflight:
            fut.cancel()
        self._inflight.clear()


def _deflate_piece(piece: bytes) -> bytes:
    """Raw-deflate one piece, ending byte-aligned and non-final (runs on the pool)."""
    comp = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -15)
    return comp.compress(piece) + comp.flush(zlib.Z_SYNC_FLUSH)


def _write_layer(
    blob_dir: Path,
    index: int,
    size: int,
    seed: int,
    gzip_layers: bool,
    pool: concurrent.futures.Executor | None,
    max_inflight: int,
) -> LayerInfo:
    """Generate layer ``index`` (one random file of ``size`` bytes) into ``blob_dir``.

    The blob is written to a temporary file in the same directory and renamed
    to its digest once complete, so a crash never leaves a blob whose name does
    not match its content.
    """
    rng = random.Random(f"kraken-ocigen:{seed}:{index}")
    fd, tmp_name = tempfile.mkstemp(prefix=".layer-", dir=blob_dir)
    tmp_path = Path(tmp_name)
    sink: _LayerSink | None = None
    try:
        with os.fdopen(fd, "wb", buffering=0) as raw_out:
            sink = _LayerSink(raw_out, gzip_layers, pool, max_inflight)
            sink.write(_tar_header("ocigen/", 0, is_dir=True))
            sink.write(_tar_header(f"ocigen/layer-{index}.bin", size))
            remaining = size
            while remaining > 0:
                n = min(CHUNK_SIZE, remaining)
                sink.write(rng.randbytes(n))
                remaining -= n
            pad = (-size) % _TAR_BLOCK
            # End of archive: padding of the last member plus two zero blocks.
            sink.write(b"\0" * (pad + 2 * _TAR_BLOCK))
            digest, diff_id = sink.finish()
        final = blob_dir / digest.split(":", 1)[1]
        os.replace(tmp_path, final)
    except BaseException:
        if sink is not None:
            sink.abort()
        tmp_path.unlink(missing_ok=True)
        raise
    return LayerInfo(
        digest=digest,
        diff_id=diff_id,
        size=sink.blob_size,
        uncompressed_size=sink.raw_size,
        media_type=MEDIA_TYPE_LAYER_GZIP if gzip_layers else MEDIA_TYPE_LAYER_TAR,
    )


def _write_blob(blob_dir: Path, data: bytes) -> str:
    """Store a small in-memory blob (config, manifest) by digest; return the digest."""
    hexdigest = hashlib.sha256(data).hexdigest()
    _atomic_write(blob_dir / hexdigest, data)
    return "sha256:" + hexdigest


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via temp file + rename so readers never see a half-written file."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _update_index(outdir: Path, descriptor: dict[str, Any], tag: str) -> None:
    """Add ``descriptor`` to index.json, replacing any manifest with the same tag.

    Merging (rather than overwriting) is what lets several tags live in one
    layout directory.
    """
    index_path = outdir / "index.json"
    manifests: list[dict[str, Any]] = []
    if index_path.exists():
        existing = json.loads(index_path.read_bytes())
        manifests = [
            m
            for m in existing.get("manifests", [])
            if (m.get("annotations") or {}).get(REF_NAME_ANNOTATION) != tag
        ]
    manifests.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": manifests}
    _atomic_write(index_path, json.dumps(index, indent=2, sort_keys=True).encode() + b"\n")


def generate_oci_layout(
    outdir: Path,
    tag: str,
    layer_sizes: Sequence[int],
    *,
    seed: int,
    gzip_layers: bool = True,
    architecture: str | None = None,
    jobs: int | None = None,
) -> GeneratedImage:
    """Generate an image with one random file per layer into OCI layout ``outdir``.

    ``layer_sizes`` are the sizes in bytes of the random file inside each
    layer (the tar adds ~2.5 KiB of headers).  ``seed`` makes the content
    reproducible.  ``jobs`` bounds the number of threads used for layers and
    for deflating (default: number of CPUs; 1 = fully sequential).  The layout is created if needed; an existing
    layout is extended and the tag's index entry replaced.
    """
    if not layer_sizes:
        raise ValueError("an image needs at least one layer (docker cannot load a layerless image)")
    if any(s < 0 for s in layer_sizes):
        raise ValueError(f"layer sizes must be >= 0, got {list(layer_sizes)}")
    if not tag or ":" in tag or "@" in tag or tag != tag.strip():
        raise ValueError(f"invalid tag {tag!r} (no ':', '@' or surrounding spaces)")
    outdir = Path(outdir).absolute()
    if ":" in str(outdir):
        raise ValueError(f"layout path {outdir} must not contain ':' (skopeo's oci: syntax splits on it)")
    blob_dir = outdir / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    layout_file = outdir / "oci-layout"
    if not layout_file.exists():
        _atomic_write(layout_file, b'{"imageLayoutVersion":"1.0.0"}')

    workers = max(1, jobs or os.cpu_count() or 1)
    layer_workers = min(len(layer_sizes), workers)
    # Two pools: layer threads produce random bytes and hash (GIL-light), the
    # piece pool deflates.  Layer threads only wait on piece futures and piece
    # jobs wait on nothing, so the split cannot deadlock.
    piece_pool = (
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocigen-deflate")
        if gzip_layers and workers > 1
        else None
    )
    try:
        args = [(blob_dir, i, s, seed, gzip_layers, piece_pool, workers + 1) for i, s in enumerate(layer_sizes)]
        if layer_workers == 1:
            layers = [_write_layer(*a) for a in args]
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=layer_workers, thread_name_prefix="ocigen") as pool:
                futures = [pool.submit(_write_layer, *a) for a in args]
                layers = [f.result() for f in futures]
    finally:
        if piece_pool is not None:
            piece_pool.shutdown(wait=True, cancel_futures=True)

    arch = architecture or host_architecture()
    config_obj = {
        "architecture": arch,
        "os": "linux",
        "created": FIXED_CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {"org.kraken.ocigen.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {
                "created": FIXED_CREATED,
                "created_by": f"kraken ocigen: layer {i}, {size} random bytes, seed {seed}",
            }
            for i, size in enumerate(layer_sizes)
        ],
    }
    config = _canonical_json(config_obj)
    config_digest = _write_blob(blob_dir, config)

    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [
            {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size} for layer in layers
        ],
    }
    manifest = _canonical_json(manifest_obj)
    manifest_digest = _write_blob(blob_dir, manifest)

    _update_index(
        outdir,
        {
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest),
            "annotations": {REF_NAME_ANNOTATION: tag},
            "platform": {"architecture": arch, "os": "linux"},
        },
        tag,
    )
    return GeneratedImage(
        layout=outdir,
        tag=tag,
        manifest_digest=manifest_digest,
        manifest=manifest,
        config_digest=config_digest,
        config=config,
        layer_digests=[layer.digest for layer in layers],
        diff_ids=[layer.diff_id for layer in layers],
        layer_sizes=[layer.size for layer in layers],
        uncompressed_sizes=[layer.uncompressed_size for layer in layers],
        layer_media_type=MEDIA_TYPE_LAYER_GZIP if gzip_layers else MEDIA_TYPE_LAYER_TAR,
        seed=seed,
    )


def _parse_size_mb(text: str) -> int:
    """CLI sizes are MiB and may be fractional (``0.5`` = 512 KiB)."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number of MiB: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"size must be >= 0: {text!r}")
    return int(value * 1024 * 1024)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints a JSON summary of the generated image on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.ocigen",
        description="Generate a seeded, deterministic multi-layer OCI image layout (one random file per layer).",
    )
    parser.add_argument("outdir", type=Path, help="OCI layout directory (created or extended)")
    parser.add_argument("tag", help="tag (org.opencontainers.image.ref.name) of the image")
    parser.add_argument("sizes", nargs="+", type=_parse_size_mb, metavar="SIZE_MB", help="layer sizes in MiB")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); new seed = new digests")
    parser.add_argument("--no-gzip", action="store_true", help="store plain tar layers instead of tar+gzip")
    parser.add_argument("--jobs", type=int, default=None, help="worker threads (default: CPUs)")
    args = parser.parse_args(argv)

    start = time.monotonic()
    try:
        image = generate_oci_layout(
            args.outdir, args.tag, args.sizes, seed=args.seed, gzip_layers=not args.no_gzip, jobs=args.jobs
        )
    except ValueError as exc:
        parser.error(str(exc))
    elapsed = time.monotonic() - start
    summary = {
        "oci_ref": image.oci_ref,
        "manifest_digest": image.manifest_digest,
        "config_digest": image.config_digest,
        "layer_digests": image.layer_digests,
        "diff_ids": image.diff_ids,
        "layer_sizes": image.layer_sizes,
        "total_size": image.total_size,
        "seconds": round(elapsed, 3),
    }
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
