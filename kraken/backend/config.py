"""The ``backends:`` and ``auth:`` config shared by origin and build-index.

```yaml
backends:
  - namespace: ".*"          # regex, re.fullmatch against the namespace; first match wins
    backend:
      testfs: {addr: "localhost:14000", root: "", name_path: sharded_docker_blob}
      # or: file: {root: /var/lib/kraken/backend, name_path: sharded_docker_blob}
      # or: s3: {region: us-east-1, bucket: b, name_path: sharded_docker_blob, username: u}
    bandwidth: {enable: true, egress_bits_per_sec: 800000000, ingress_bits_per_sec: 800000000}
    must_ready: true         # the origin's /readiness answers 503 while this backend does not answer
auth:                        # normally in the --secrets file, never in the config
  <backend kind>:
    <credential set>: {<field>: <secret>, ...}
    # or Kraken's shape, the same fields one level down under the kind's name:
    <credential set>: {<backend kind>: {<field>: <secret>, ...}}
```

The backend kinds are those of :data:`kraken.backend.registry.BACKENDS`. Mistakes (no backend
kind, two kinds, an unknown kind, a bad regex, an unknown ``name_path``) fail when the config is
loaded, so a component never starts with a backend it cannot build.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, ClassVar

from kraken.backend.bandwidth import BandwidthConfig
from kraken.backend.base import Credentials
from kraken.backend.registry import BACKENDS
from kraken.config import ConfigError, NamedIn, OneOf, Secret

#: One credential set as written: field -> secret, or (Kraken's shape, so its secrets files load
#: unchanged) the same fields nested under the kind's name. The mapping is tried first so that a
#: wrong scalar is reported as "expected a string (a secret, not shown)".
CredentialSetConfig = dict[str, dict[str, Secret] | Secret]

#: The ``auth:`` section: backend kind -> credential-set name -> field -> secret. Each backend
#: gets its kind's sets (:class:`~kraken.backend.base.BackendContext`), flattened by
#: :func:`kind_credentials`.
AuthConfig = Annotated[dict[str, dict[str, CredentialSetConfig]], NamedIn("backend", BACKENDS.names)]

#: The ``auth:`` section as built (or as a caller passes it): kind -> set name -> fields.
Auth = Mapping[str, Mapping[str, Mapping[str, Secret | Mapping[str, Secret]]]]


def kind_credentials(auth: Auth, kind: str) -> dict[str, Credentials]:
    """``kind``'s credential sets with Kraken's ``{<kind>: {...}}`` level unwrapped, so every
    backend reads plain ``field -> secret`` sets whichever shape the secrets file used."""
    sets: dict[str, Credentials] = {}
    for set_name, fields in auth.get(kind, {}).items():
        flat: dict[str, Secret] = {}
        for key, value in fields.items():
            if isinstance(value, Secret):
                flat[key] = value
            elif key == kind:
                flat.update(value)
            else:
                raise ConfigError(f"auth.{kind}.{set_name}.{key}: expected a string (a secret, not shown); "
                                  f"only {kind!r} may hold a mapping (Kraken's shape)")
        sets[set_name] = flat
    return sets


class BackendConfig(OneOf):
    """Exactly one registered backend kind: ``{testfs: {...}}`` builds ``BackendConfig("testfs", ...)``."""

    what = "backend"
    kinds: ClassVar = BACKENDS.config_classes


@dataclass
class NamespaceBackendConfig:
    namespace: str
    backend: BackendConfig
    #: Upload/download rate limits of this backend (kraken.backend.bandwidth).
    bandwidth: BandwidthConfig = field(default_factory=BandwidthConfig)
    #: The origin is ready only while this backend answers (Backend.ready).
    must_ready: bool = False

    def __post_init__(self) -> None:
        try:
            re.compile(self.namespace)
        except re.error as e:
            raise ConfigError(f"backends: namespace {self.namespace!r} is not a valid regex: {e}") from None
