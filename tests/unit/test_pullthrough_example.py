"""examples/backends/pullthrough loads, and routes library/... to the pull-through backends."""
from __future__ import annotations

from pathlib import Path

import pytest

from kraken.agent.config import AgentConfig
from kraken.buildindex.config import BuildIndexConfig
from kraken.config import load_config, read_secrets
from kraken.origin.config import OriginConfig
from kraken.proxy.config import ProxyConfig
from kraken.testfs.config import TestfsConfig
from kraken.tracker.config import TrackerConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "backends" / "pullthrough"


@pytest.mark.parametrize("component,cls", [("testfs", TestfsConfig), ("tracker", TrackerConfig),
                                           ("proxy", ProxyConfig), ("agent", AgentConfig)])
def test_other_components_load(component: str, cls: type) -> None:
    load_config(cls, EXAMPLE / component / "pullthrough.yaml")


def test_library_is_pulled_through() -> None:
    origin = load_config(OriginConfig, EXAMPLE / "origin" / "pullthrough.yaml")
    index = load_config(BuildIndexConfig, EXAMPLE / "build-index" / "pullthrough.yaml")
    for config, kind in ((origin, "registry_blob"), (index, "registry_tag")):
        first = config.backends[0]
        assert first.namespace == "library/.*" and first.backend.kind == kind
        assert first.backend.config.address == "registry-1.docker.io"
        assert config.backends[-1].backend.kind == "testfs"


def test_secrets_example_reads() -> None:
    auth = read_secrets(EXAMPLE / "secrets.example.yaml")["auth"]
    assert set(auth) == {"registry_blob", "registry_tag"}
