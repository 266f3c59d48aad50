"""``python -m kraken build-index --config FILE [--port N]``"""
from __future__ import annotations

import argparse

from kraken.buildindex.config import BuildIndexConfig
from kraken.cli import load_component_config, run_component


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """build-index needs no flags beyond the common ones (--config, --port, --host)."""


def load(args: argparse.Namespace) -> BuildIndexConfig:
    """The effective config: the file, then command-line overrides."""
    return load_component_config(BuildIndexConfig, args, example="config/build-index/development.yaml")


if __name__ == "__main__":
    run_component("build-index")
