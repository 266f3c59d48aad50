"""``kraken testfs [--config FILE] [--port N] [--root DIR]``: runs with no config file too."""
from __future__ import annotations

import argparse

from kraken.cli import load_component_config, run_component
from kraken.testfs.config import TestfsConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", help="directory holding the files (overrides the config)")


def load(args: argparse.Namespace) -> TestfsConfig:
    """The effective config: file (or defaults), then command-line overrides."""
    config = load_component_config(TestfsConfig, args)
    if args.root:
        config.root = args.root
    return config


if __name__ == "__main__":
    run_component("testfs")
