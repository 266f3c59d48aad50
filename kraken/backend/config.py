"""The ``backends:`` and ``auth:`` config shared by origin and build-index.

```yaml
backends:
  - namespace: ".*"          # regex, re.fullmatch against the namespace; first match wins
    backend:
      testfs: {addr: "localhost:14000", root: "", name_path: sharded_docker_blob}
      # or: file: {root: /var/lib/kraken/backend, name_path: sharded_docker_blob}
      # or: s3: {region: us-east-1, bucket: b, name_path: sharded_docker_blob, username: u}
auth:                        # normally in the --secrets file, never in the config
  <backend kind>:
    <credential set>: {<field>: <secret>, ...}   # or Kraken's {<group>: {<field>: <secret>}}
```

The backend kinds are those of :data:`kraken.backend.registry.BACKENDS`. Mistakes (no backend
kind, two kinds, an unknown kind, a bad regex, an unknown ``name_path``) fail when the config is
loaded, so a component never starts with a backend it cannot build.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, ClassVar

from kraken.backend.registry import BACKENDS
from kraken.config import ConfigError, NamedIn, OneOf, Secret

#: The ``auth:`` section: backend kind -> credential-set name -> field -> secret (or, as Kraken
#: writes them, group -> field -> secret: ``s3: {team: {s3: {aws_access_key_id: ...}}}``). Each
#: backend gets its kind's sets (:class:`~kraken.backend.base.BackendContext`).
AuthConfig = Annotated[dict[str, dict[str, dict[str, dict[str, Secret] | Secret]]],
                       NamedIn("backend", BACKENDS.names)]


class BackendConfig(OneOf):
    """Exactly one registered backend kind: ``{testfs: {...}}`` builds ``BackendConfig("testfs", ...)``."""

    what = "backend"
    kinds: ClassVar = BACKENDS.config_classes


@dataclass
class NamespaceBackendConfig:
    namespace: str
    backend: BackendConfig

    def __post_init__(self) -> None:
        try:
            re.compile(self.namespace)
        except re.error as e:
            raise ConfigError(f"backends: namespace {self.namespace!r} is not a valid regex: {e}") from None
