"""Tag names (``repo:tag``) and their validation.

Every tag that enters build-index passes through :func:`parse_tag`, so a malformed name never
reaches a storage backend, where a name like ``../x`` could address the wrong object.
"""
from __future__ import annotations

from dataclasses import dataclass

from kraken.core.names import InvalidName, check_name, is_valid_tag


class TagError(ValueError):
    """A string that is not a valid ``repo:tag`` (or repository name)."""


def validate_repo(repo: str) -> str:
    """Return ``repo`` if it is a valid repository name, else raise :class:`TagError`."""
    try:
        return check_name(repo)
    except InvalidName as e:
        raise TagError(str(e)) from None


@dataclass(frozen=True, order=True)
class Tag:
    repo: str
    name: str

    def __str__(self) -> str:
        return f"{self.repo}:{self.name}"


def parse_tag(value: str) -> Tag:
    """Parse ``repo:tag``; the repository may contain ``/`` but never ``:``."""
    repo, sep, name = value.rpartition(":")
    if not sep:
        raise TagError(f"invalid tag {value[:300]!r}: expected <repo>:<tag>")
    validate_repo(repo)
    if not is_valid_tag(name):
        raise TagError(f"invalid tag part {name[:200]!r}: want [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}")
    return Tag(repo, name)
