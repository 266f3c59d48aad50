"""Manifest media types and parsing: Docker v2 schema 2, Docker manifest lists, OCI manifests
and OCI indexes.

:func:`parse_manifest` validates the JSON and returns the descriptors it references, each
marked as a blob (config, layers) or a child manifest (entries of a list/index), so callers can
check and walk references recursively.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from kraken.core.digest import Digest, DigestError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

IMAGE_MANIFESTS = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_MANIFESTS = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
SUPPORTED_MANIFESTS = IMAGE_MANIFESTS | INDEX_MANIFESTS


class ManifestError(ValueError):
    """The bytes are not a valid manifest of a supported type."""


@dataclass(frozen=True)
class Descriptor:
    digest: Digest
    size: int
    media_type: str
    is_manifest: bool


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: Digest
    raw: bytes
    references: tuple[Descriptor, ...]

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        return tuple(d for d in self.references if not d.is_manifest)

    @property
    def children(self) -> tuple[Descriptor, ...]:
        return tuple(d for d in self.references if d.is_manifest)


def _descriptor(obj: object, where: str, is_manifest: bool) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: descriptor must be an object")
    try:
        digest = Digest.parse(str(obj.get("digest", "")))
    except DigestError as e:
        raise ManifestError(f"{where}: {e}") from None
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}: size must be a non-negative integer")
    media_type = obj.get("mediaType", "")
    if not isinstance(media_type, str):
        raise ManifestError(f"{where}: mediaType must be a string")
    return Descriptor(digest, size, media_type, is_manifest)


def detect_media_type(doc: dict, content_type: str | None) -> str:
    """The manifest's type: its own ``mediaType`` field, else the Content-Type, else by shape."""
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if content_type:
        ct = content_type.split(";")[0].strip()
        if ct in SUPPORTED_MANIFESTS:
            return ct
    # OCI allows mediaType to be omitted; decide by shape.
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def parse_manifest(raw: bytes, content_type: str | None = None) -> Manifest:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a JSON object")
    if doc.get("schemaVersion") != 2:
        raise ManifestError("unsupported schemaVersion (only schema 2 manifests are accepted)")
    media_type = detect_media_type(doc, content_type)
    if media_type not in SUPPORTED_MANIFESTS:
        raise ManifestError(f"unsupported manifest media type {media_type!r}")
    refs: list[Descriptor] = []
    if media_type in IMAGE_MANIFESTS:
        if "config" not in doc:
            raise ManifestError("image manifest has no config")
        refs.append(_descriptor(doc["config"], "config", False))
        layers = doc.get("layers", [])
        if not isinstance(layers, list):
            raise ManifestError("layers must be a list")
        refs.extend(_descriptor(layer, f"layers[{i}]", False) for i, layer in enumerate(layers))
    else:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise ManifestError("index has no manifests list")
        refs.extend(_descriptor(m, f"manifests[{i}]", True) for i, m in enumerate(manifests))
    return Manifest(media_type, Digest.of_bytes(raw), raw, tuple(refs))
