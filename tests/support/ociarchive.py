"""OCI image archives and references as the daemons' import commands want them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tests.support.ocigen import GeneratedImage


def normalize_tagged(name: str) -> str:
    """Add ``:latest`` to a reference without tag or digest (docker-archive needs a tag)."""
    last = name.rsplit("/", 1)[-1]
    if "@" in name or ":" in last:
        return name
    return name + ":latest"


# --------------------------------------------------------------------------
# plain HTTP access to a registry (no proxies, no client binaries)
# --------------------------------------------------------------------------


def write_oci_archive(image: GeneratedImage, ref_name: str, archive: Path) -> None:
    """Tar up one image of a layout (manifest, config, layers) with ``ref_name`` in index.json."""
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": image.manifest_digest,
                "size": len(image.manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }
        ],
    }
    index_bytes = json.dumps(index).encode()
    layout_bytes = b'{"imageLayoutVersion":"1.0.0"}'
    with tarfile.open(archive, "w") as tar:
        for name, data in (("oci-layout", layout_bytes), ("index.json", index_bytes)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for digest in [image.manifest_digest, *image.blob_digests]:
            tar.add(image.blob_path(digest), arcname=f"blobs/sha256/{digest.split(':', 1)[1]}")


# --------------------------------------------------------------------------
# podman
# --------------------------------------------------------------------------
