"""testfs configuration: defaults, the shipped YAML files, command-line overrides."""
from __future__ import annotations

import argparse
from pathlib import Path

from kraken.cli import build_parser
from kraken.config import load_config
from kraken.testfs.__main__ import load
from kraken.testfs.config import TestfsConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "testfs"


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse as ``kraken testfs`` does: the common flags of kraken.cli plus testfs's own."""
    return build_parser("testfs").parse_args(["testfs", *argv])


def test_runs_without_a_config_file() -> None:
    config = load(parse([]))
    assert config.listen.port == 14000
    assert config.root


def test_development_config() -> None:
    config = load_config(TestfsConfig, CONFIG_DIR / "development.yaml")
    assert config.listen.port == 14000
    assert config.root == "/tmp/kraken-devcluster/testfs"


def test_command_line_overrides_config() -> None:
    config = load(parse([
        "--config", str(CONFIG_DIR / "development.yaml"),
        "--port", "14555", "--host", "127.0.0.1", "--root", "/srv/elsewhere",
    ]))
    assert (config.listen.host, config.listen.port, config.root) == ("127.0.0.1", 14555, "/srv/elsewhere")
