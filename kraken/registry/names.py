"""Repository names, tags and references of the registry protocol, validated before anything
touches storage. The grammar itself is :mod:`kraken.core.names`, shared with every component;
this module maps its failures onto the registry's error codes.
"""
from __future__ import annotations

from dataclasses import dataclass

from kraken.core.digest import Digest, DigestError
from kraken.core.names import MAX_NAME_LENGTH, is_valid_name, is_valid_tag
from kraken.registry.errors import RegistryError

__all__ = ["MAX_NAME_LENGTH", "Reference", "is_valid_name", "is_valid_tag", "parse_digest", "parse_reference",
           "validate_name"]


def validate_name(name: str) -> str:
    """Return ``name`` or raise NAME_INVALID."""
    if not is_valid_name(name):
        raise RegistryError("NAME_INVALID", detail={"name": name[:MAX_NAME_LENGTH]})
    return name


def parse_digest(value: str) -> Digest:
    """Parse a client-supplied digest, raising DIGEST_INVALID."""
    try:
        return Digest.parse(value)
    except DigestError as e:
        raise RegistryError("DIGEST_INVALID", message="invalid digest", detail=str(e)) from None


@dataclass(frozen=True)
class Reference:
    """A manifest reference: exactly one of ``tag`` or ``digest``."""

    tag: str | None = None
    digest: Digest | None = None

    def __str__(self) -> str:
        return self.tag if self.tag is not None else str(self.digest)


def parse_reference(value: str) -> Reference:
    """A tag, or a digest when the value contains ``:`` (tags cannot)."""
    if ":" in value:
        return Reference(digest=parse_digest(value))
    if not is_valid_tag(value):
        raise RegistryError("TAG_INVALID", message="invalid tag", detail={"tag": value})
    return Reference(tag=value)
