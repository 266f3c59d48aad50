"""Referrer descriptors: what the OCI referrers API lists for a subject, and where they come from.

A manifest with a ``subject`` field is a *referrer* of that subject (a signature, an SBOM, an
attestation attached to an image). The referrers API (distribution-spec v1.1, "Listing
Referrers") answers an image index whose ``manifests`` are one descriptor per referrer, with
the referrer's ``artifactType`` (its own field, else its config's media type) and annotations.

The descriptor is always derived from the referrer manifest's bytes by :func:`referrer_of`, by
the registry that accepts the push and again by build-index from its copy on the origins, so a
stored descriptor can never claim a type, size or annotations its manifest does not have.
:meth:`ReferrerDescriptor.from_json` re-validates what comes back from storage or the wire.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kraken.core.digest import Digest, DigestError
from kraken.registry.manifest import IMAGE_MANIFESTS, OCI_INDEX, ManifestError, detect_media_type


@dataclass(frozen=True)
class ReferrerDescriptor:
    """One entry of a referrers index."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type:
            doc["artifactType"] = self.artifact_type
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc

    def encode(self) -> bytes:
        """Canonical bytes (sorted keys), so storing the same referrer twice writes the same object."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, doc: object) -> ReferrerDescriptor:
        """Validate a descriptor read back from storage or another component; ValueError if bad."""
        if not isinstance(doc, dict):
            raise ValueError("referrer descriptor must be an object")
        media_type = doc.get("mediaType")
        size = doc.get("size")
        artifact_type = doc.get("artifactType")
        if not isinstance(media_type, str) or not media_type:
            raise ValueError("referrer descriptor: mediaType must be a non-empty string")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("referrer descriptor: size must be a non-negative integer")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise ValueError("referrer descriptor: artifactType must be a string")
        try:
            digest = Digest.parse(str(doc.get("digest", "")))
        except DigestError as e:
            raise ValueError(f"referrer descriptor: {e}") from None
        return cls(media_type, digest, size, artifact_type or None, _annotations(doc.get("annotations")))


def referrer_of(
    raw: bytes, digest: Digest, content_type: str | None = None
) -> tuple[Digest, ReferrerDescriptor] | None:
    """The subject a manifest refers to and its descriptor in that subject's referrers index;
    ``None`` for a manifest without ``subject``.

    ``raw`` must already be a manifest that :func:`kraken.registry.manifest.parse_manifest`
    accepts; a malformed ``subject``, ``artifactType`` or ``annotations`` raises ManifestError.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("subject") is None:
        return None
    subject = doc["subject"]
    if not isinstance(subject, dict):
        raise ManifestError("subject must be a descriptor object")
    try:
        subject_digest = Digest.parse(str(subject.get("digest", "")))
    except DigestError as e:
        raise ManifestError(f"subject: {e}") from None
    media_type = detect_media_type(doc, content_type)
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestError("artifactType must be a string")
    if not artifact_type and media_type in IMAGE_MANIFESTS and isinstance(doc.get("config"), dict):
        config_type = doc["config"].get("mediaType")
        artifact_type = config_type if isinstance(config_type, str) else None
    try:
        annotations = _annotations(doc.get("annotations"))
    except ValueError as e:
        raise ManifestError(str(e)) from None
    return subject_digest, ReferrerDescriptor(media_type, digest, len(raw), artifact_type or None, annotations)


def referrers_index(descriptors: list[ReferrerDescriptor]) -> bytes:
    """The body of a referrers answer: an OCI image index (empty ``manifests`` when none)."""
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [d.to_json() for d in descriptors],
    }).encode()


def _annotations(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("annotations must map strings to strings")
    return dict(value)
