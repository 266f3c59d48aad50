"""The proxy's checked-in configs load, and mistakes in them fail at start."""
from __future__ import annotations

from pathlib import Path

import pytest

from kraken.config import ConfigError, load_config
from kraken.proxy.config import ProxyConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "proxy"


def test_development_config() -> None:
    config = load_config(ProxyConfig, CONFIG_DIR / "development.yaml")
    assert config.listen.port == 15000
    assert config.origins.hosts == ["localhost:15002"]
    assert config.build_index.addr == "localhost:15004"
    assert config.store.root == "/tmp/kraken-devcluster/proxy"
    assert config.max_manifest_size == 4 << 20
    assert config.upload_ttl == 3600.0


def test_overlay_and_typos(tmp_path: Path) -> None:
    overlay = tmp_path / "proxy.yaml"
    overlay.write_text(f"extends: {CONFIG_DIR / 'development.yaml'}\nmax_manifest_size: 1MB\nupload_ttl: 5m\n")
    config = load_config(ProxyConfig, overlay)
    assert (config.max_manifest_size, config.upload_ttl) == (1 << 20, 300.0)
    overlay.write_text(f"extends: {CONFIG_DIR / 'development.yaml'}\nmax_manifest_sise: 1MB\n")
    with pytest.raises(ConfigError, match="max_manifest_sise"):
        load_config(ProxyConfig, overlay)
    with pytest.raises(ConfigError, match="store"):
        load_config(ProxyConfig, CONFIG_DIR / "base.yaml")
