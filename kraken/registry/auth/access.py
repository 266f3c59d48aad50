"""What a registry request asks for, in the Docker token protocol's terms, and the errors
that refuse it.

A request needs a set of :class:`Access` (``repository:<name>:pull,push``): reads need
``pull``, writes ``pull`` and ``push`` (as distribution asks), a cross-repository mount also
``pull`` on the source, the catalog ``registry:catalog:*``, and ``GET /v2/`` nothing (only
valid credentials). Both authenticators take this list; the token one also checks it
against the token's ``access`` claim and names it in its challenge.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kraken.registry.errors import RegistryError
from kraken.registry.names import is_valid_name

PULL = "pull"
PUSH = "push"
_READS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Access:
    """One resource and the actions wanted on it."""

    type: str
    name: str
    actions: tuple[str, ...]

    @property
    def scope(self) -> str:
        """As a token ``scope`` parameter: ``repository:library/x:pull,push``."""
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def required_access(kind: str, method: str, name: str, query: Mapping[str, str]) -> list[Access]:
    """The access a request of endpoint ``kind`` (see :mod:`kraken.registry.app`) needs."""
    if kind == "base":
        return []
    if kind == "catalog":
        return [Access("registry", "catalog", ("*",))]
    if kind in ("uploads", "upload") or method not in _READS:
        wanted = [Access("repository", name, (PULL, PUSH))]
        source = query.get("from")
        if kind == "uploads" and query.get("mount") and source and source != name and is_valid_name(source):
            wanted.append(Access("repository", source, (PULL,)))
        return wanted
    return [Access("repository", name, (PULL,))]


def unauthorized(challenge: str, message: str = "authentication required",
                 detail: Sequence[Mapping[str, str]] | None = None) -> RegistryError:
    """401 ``UNAUTHORIZED`` with the ``WWW-Authenticate`` challenge a client answers."""
    return RegistryError("UNAUTHORIZED", message=message, detail=list(detail) if detail else None,
                         headers={"WWW-Authenticate": challenge})


def too_many_failures(retry_after: float) -> RegistryError:
    """429: this client failed too often; it may try again after ``retry_after`` seconds."""
    return RegistryError("TOOMANYREQUESTS", message="too many failed authentication attempts",
                         headers={"Retry-After": str(max(1, round(retry_after)))})


def quote_param(value: str) -> str:
    """An auth-param value as a quoted string (RFC 9110)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
