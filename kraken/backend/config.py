"""The ``backends:`` config shared by origin and build-index.

```yaml
backends:
  - namespace: ".*"          # regex, re.fullmatch against the namespace; first match wins
    backend:
      testfs: {addr: "localhost:14000", root: "", name_path: sharded_docker_blob}
      # or: file: {root: /var/lib/kraken/backend, name_path: sharded_docker_blob}
```

Mistakes (no backend kind, two kinds, a bad regex, an unknown ``name_path``) fail when the
config is loaded, so a component never starts with a backend it cannot build.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

from kraken.backend.namepath import NamePathKind
from kraken.config import ConfigError


@dataclass
class TestfsBackendConfig:
    """A testfs server; ``root`` is a path prefix inside it, so several backends can share one."""

    __test__ = False  # not a pytest test class despite the name

    addr: str
    root: str = ""
    name_path: NamePathKind = "identity"


@dataclass
class FileBackendConfig:
    """A local directory, laid out exactly like a testfs root."""

    root: str
    name_path: NamePathKind = "identity"


@dataclass
class BackendConfig:
    """Exactly one backend kind must be set."""

    testfs: TestfsBackendConfig | None = None
    file: FileBackendConfig | None = None

    def __post_init__(self) -> None:
        kinds = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if len(kinds) != 1:
            allowed = ", ".join(f.name for f in fields(self))
            got = ", ".join(kinds) or "none"
            raise ConfigError(f"backend: exactly one of {allowed} must be set, got {got}")

    @property
    def kind(self) -> str:
        return next(f.name for f in fields(self) if getattr(self, f.name) is not None)


@dataclass
class NamespaceBackendConfig:
    namespace: str
    backend: BackendConfig

    def __post_init__(self) -> None:
        try:
            re.compile(self.namespace)
        except re.error as e:
            raise ConfigError(f"backends: namespace {self.namespace!r} is not a valid regex: {e}") from None
