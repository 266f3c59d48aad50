"""testfs configuration: where to listen and which directory holds the files."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from kraken.config import ListenConfig
from kraken.http.config import HttpServerConfig, TLSConfig

DEFAULT_PORT = 14000


@dataclass
class TestfsListenConfig(ListenConfig):
    """testfs listens on loopback unless told otherwise: it has no authentication, so anyone
    who reaches it can rewrite what the origins and build-index read back (tags included)."""

    __test__ = False

    host: str = "127.0.0.1"


def _default_root() -> str:
    return os.path.join(tempfile.gettempdir(), "kraken-testfs")


@dataclass
class TestfsConfig:
    """Defaults let ``kraken testfs`` run with no config file (127.0.0.1:14000, a temp-dir
    root). A YAML ``listen:`` mapping keeps the loopback default for a missing ``host``; config
    files state the port explicitly (config/testfs/base.yaml does).
    """

    __test__ = False  # not a pytest test class despite the name

    listen: TestfsListenConfig = field(default_factory=lambda: TestfsListenConfig(port=DEFAULT_PORT))
    http: HttpServerConfig = field(default_factory=HttpServerConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    root: str = field(default_factory=_default_root)
