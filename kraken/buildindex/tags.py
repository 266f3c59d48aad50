"""Tag names (``repo:tag``) and their validation.

Every tag that enters build-index passes through :func:`parse_tag`, so a malformed name never
reaches a storage backend, where a name like ``../x`` could address the wrong object.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# The OCI distribution spec's repository name grammar: lowercase path components separated by
# "/", each made of alphanumerics joined by ".", "_", "__" or runs of "-".
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPO_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
MAX_REPO_LENGTH = 255


class TagError(ValueError):
    """A string that is not a valid ``repo:tag`` (or repository name)."""


def validate_repo(repo: str) -> str:
    """Return ``repo`` if it is a valid repository name, else raise :class:`TagError`."""
    if len(repo) > MAX_REPO_LENGTH or not REPO_RE.fullmatch(repo):
        raise TagError(f"invalid repository name {repo!r}")
    return repo


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
        raise TagError(f"invalid tag {value!r}: expected <repo>:<tag>")
    validate_repo(repo)
    if not TAG_RE.fullmatch(name):
        raise TagError(f"invalid tag {value!r}: tag part must match {TAG_RE.pattern}")
    return Tag(repo, name)
