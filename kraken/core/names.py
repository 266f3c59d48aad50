"""Repository names (namespaces), tags and object path lengths: the one validator every
component uses before a name touches storage, a backend path or a log line.

Names become storage namespaces and backend paths, so the distribution spec's strict grammar
(lowercase components joined by ``.``, ``_``, ``__`` or dashes, separated by ``/``, at most
255 characters) is what keeps ``..``, absolute paths, NUL and control bytes and unbounded
lengths out of every store. The registry, the origin (namespaces), build-index (``repo:tag``),
the agent and the tracker all check with :func:`check_name`, so a name one component accepts
is never refused by the next one with a 500.
"""
from __future__ import annotations

import re

MAX_NAME_LENGTH = 255
#: Longest file name component (Linux NAME_MAX, in bytes) and path (PATH_MAX) a file store
#: takes: longer ones fail in the OS with ENAMETOOLONG, so they are refused up front.
MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class InvalidName(ValueError):
    """A repository name, tag or object path that breaks the grammar or a length limit."""


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _NAME_RE.fullmatch(name) is not None


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name (namespace), else raise InvalidName."""
    if not is_valid_name(name):
        raise InvalidName(f"invalid repository name {_shorten(name)!r}")
    return name


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None


def check_path_lengths(path: str) -> str:
    """Return ``path`` if no ``/``-separated component is over :data:`MAX_COMPONENT_BYTES`
    bytes and the whole is within :data:`MAX_PATH_BYTES`, else raise InvalidName."""
    encoded = path.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidName(f"path of {len(encoded)} bytes is over the {MAX_PATH_BYTES} byte limit")
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if longest > MAX_COMPONENT_BYTES:
        raise InvalidName(f"path component of {longest} bytes is over the {MAX_COMPONENT_BYTES} byte limit")
    return path


def _shorten(value: str, limit: int = 100) -> str:
    """Enough of a rejected value to recognise it; an error never echoes kilobytes back."""
    return value if len(value) <= limit else f"{value[:limit]}...({len(value)} chars)"
