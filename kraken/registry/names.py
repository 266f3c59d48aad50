"""Repository names, tags and references, validated before anything touches storage.

Names become storage namespaces and backend paths, so a strict grammar (the distribution
spec's: lowercase components joined by ``.``, ``_``, ``__`` or dashes, separated by ``/``)
is what keeps ``..``, absolute paths and odd bytes out of every store.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from kraken.core.digest import Digest, DigestError
from kraken.registry.errors import RegistryError

MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _NAME_RE.fullmatch(name) is not None


def validate_name(name: str) -> str:
    """Return ``name`` or raise NAME_INVALID."""
    if not is_valid_name(name):
        raise RegistryError("NAME_INVALID", detail={"name": name})
    return name


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None


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
