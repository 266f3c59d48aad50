"""``kraken origin --config FILE [--port N] [--advertise host:port]``."""
from __future__ import annotations

import argparse

from kraken.cli import load_component_config, run_component
from kraken.origin.config import OriginConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--advertise", help="host:port naming this origin on the hash ring (overrides the config)")


def load(args: argparse.Namespace) -> OriginConfig:
    """The effective config: file (or defaults), then command-line overrides."""
    config = load_component_config(OriginConfig, args)
    if args.advertise:
        config.advertise = args.advertise
    return config


if __name__ == "__main__":
    run_component("origin")
