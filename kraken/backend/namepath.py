"""Where a name lives inside a store, and how listed paths map back to names.

Three layouts, picked per backend with ``name_path``:

- ``identity``: the object path is the name itself. testfs (and the file backend, which
  mirrors testfs) store ``:`` as ``/``, so a name containing ``:`` is stored and read back
  fine but is listed with ``/`` in its place: use ``docker_tag`` for tags that must be listed.
- ``sharded_docker_blob``: ``docker/registry/v2/blobs/sha256/<hex[:2]>/<hex>/data``, the
  Docker-distribution layout, so a bucket can be shared with a plain registry.
- ``docker_tag``: ``repo:tag`` -> ``docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link``.

Listing works on directories, not name prefixes, so each layout also says which directory
must be walked to find every name starting with a prefix (:meth:`NamePath.list_dir`); the
backend walks it, maps each path back with :meth:`NamePath.name` (paths that are not names
of this layout, such as Docker's ``_layers`` links, map to None) and keeps the names that
really start with the prefix.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Literal

from kraken.backend.base import InvalidName

NamePathKind = Literal["identity", "sharded_docker_blob", "docker_tag"]

_HEX_RE = re.compile(r"^[0-9a-f]{2,}$")
_HEX_PREFIX_RE = re.compile(r"^[0-9a-f]*$")


def check_relative_path(path: str, what: str = "name") -> str:
    """Return ``path`` if it is a clean relative ``/``-separated path, else raise InvalidName.

    ``:`` counts as a separator because testfs stores it as ``/``: ``..:x`` would escape.
    Empty components are refused too, so two spellings (``a//b``, ``a/b``) never name one object.
    """
    if not path:
        raise InvalidName(f"empty {what}")
    if "\x00" in path:
        raise InvalidName(f"{what} {path!r} contains a NUL byte")
    if path.startswith("/"):
        raise InvalidName(f"{what} {path!r} is absolute")
    for part in path.replace(":", "/").split("/"):
        if part in ("", ".", ".."):
            raise InvalidName(f"{what} {path!r} has an empty, '.' or '..' component")
    return path


def _is_clean(path: str) -> bool:
    try:
        check_relative_path(path)
    except InvalidName:
        return False
    return True


class NamePath(ABC):
    """Maps names to object paths (relative to a backend's root) and back."""

    kind: NamePathKind

    @abstractmethod
    def path(self, name: str) -> str:
        """The object path of ``name``; raises InvalidName if the layout cannot hold it."""

    @abstractmethod
    def name(self, path: str) -> str | None:
        """The name stored at ``path``, or None if ``path`` is not an object of this layout."""

    @abstractmethod
    def list_dir(self, prefix: str) -> str | None:
        """The directory holding every name that starts with ``prefix`` ("" = the whole root).

        None means no name of this layout can start with ``prefix``.
        """


class IdentityPath(NamePath):
    kind: NamePathKind = "identity"

    def path(self, name: str) -> str:
        return check_relative_path(name)

    def name(self, path: str) -> str | None:
        return path

    def list_dir(self, prefix: str) -> str | None:
        head = prefix.replace(":", "/").rpartition("/")[0]
        if head and not _is_clean(head):
            return None
        return head


class ShardedDockerBlobPath(NamePath):
    kind: NamePathKind = "sharded_docker_blob"
    base = "docker/registry/v2/blobs/sha256"

    def path(self, name: str) -> str:
        if not _HEX_RE.match(name):
            raise InvalidName(f"blob name {name!r} is not a lowercase hex digest")
        return f"{self.base}/{name[:2]}/{name}/data"

    def name(self, path: str) -> str | None:
        head, sep, rest = path.partition(self.base + "/")
        if head or not sep:
            return None
        parts = rest.split("/")
        if len(parts) != 3 or parts[2] != "data":
            return None
        shard, hexpart = parts[0], parts[1]
        if not _HEX_RE.match(hexpart) or hexpart[:2] != shard:
            return None
        return hexpart

    def list_dir(self, prefix: str) -> str | None:
        if not _HEX_PREFIX_RE.match(prefix):
            return None
        return f"{self.base}/{prefix[:2]}" if len(prefix) >= 2 else self.base


class DockerTagPath(NamePath):
    kind: NamePathKind = "docker_tag"
    base = "docker/registry/v2/repositories"
    _tags = "/_manifests/tags/"
    _link = "/current/link"

    def path(self, name: str) -> str:
        repo, sep, tag = name.rpartition(":")
        if not sep or not repo or not tag:
            raise InvalidName(f"tag name {name!r} is not of the form repo:tag")
        check_relative_path(repo, "repository")
        if ":" in repo or "/" in tag or tag in (".", ".."):
            raise InvalidName(f"tag name {name!r} is not of the form repo:tag")
        return f"{self.base}/{repo}{self._tags}{tag}{self._link}"

    def name(self, path: str) -> str | None:
        if not path.startswith(self.base + "/") or not path.endswith(self._link):
            return None
        middle = path[len(self.base) + 1 : -len(self._link)]
        repo, sep, tag = middle.rpartition(self._tags)
        if not sep or not repo or not tag or "/" in tag:
            return None
        return f"{repo}:{tag}"

    def list_dir(self, prefix: str) -> str | None:
        repo, sep, _ = prefix.rpartition(":")
        if sep:
            return f"{self.base}/{repo}{self._tags.rstrip('/')}" if repo and _is_clean(repo) else None
        head = prefix.rpartition("/")[0]
        if not head:
            return self.base
        return f"{self.base}/{head}" if _is_clean(head) else None


_NAME_PATHS: dict[str, type[NamePath]] = {
    cls.kind: cls for cls in (IdentityPath, ShardedDockerBlobPath, DockerTagPath)
}


def get_name_path(kind: str) -> NamePath:
    """The layout called ``kind``; raises ValueError for an unknown one."""
    try:
        return _NAME_PATHS[kind]()
    except KeyError:
        raise ValueError(f"unknown name_path {kind!r} (allowed: {', '.join(_NAME_PATHS)})") from None


class ObjectLayout:
    """A name layout under a backend root: the one place names become store paths and back."""

    def __init__(self, root: str, name_path: str) -> None:
        root = root.strip("/")
        self.root = check_relative_path(root, "backend root") if root else ""
        self.name_path = get_name_path(name_path)

    def _join(self, path: str) -> str:
        return f"{self.root}/{path}" if self.root and path else (self.root or path)

    def path(self, name: str) -> str:
        return self._join(self.name_path.path(name))

    def list_dir(self, prefix: str) -> str | None:
        """The store directory to walk for ``prefix``, or None if nothing can match."""
        directory = self.name_path.list_dir(prefix)
        return None if directory is None else self._join(directory)

    def names(self, paths: Iterable[str], prefix: str) -> list[str]:
        """Sorted names starting with ``prefix`` among store ``paths`` (relative to the store)."""
        root = self.root + "/" if self.root else ""
        found = set()
        for path in paths:
            if not path.startswith(root):
                continue
            name = self.name_path.name(path[len(root):])
            if name is not None and name.startswith(prefix):
                found.add(name)
        return sorted(found)
