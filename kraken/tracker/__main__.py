"""``python -m kraken tracker --config FILE [--port N]``"""
from __future__ import annotations

import argparse

from kraken.cli import load_component_config, run_component
from kraken.tracker.config import TrackerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tracker needs no flags beyond the common ones (--config, --port, --host)."""


def load(args: argparse.Namespace) -> TrackerConfig:
    """The effective config: the file, then command-line overrides."""
    return load_component_config(TrackerConfig, args, example="config/tracker/development.yaml")


if __name__ == "__main__":
    run_component("tracker")
