"""``python -m kraken proxy --config FILE [--port N]``"""
from __future__ import annotations

import argparse

from kraken.cli import load_component_config, run_component
from kraken.proxy.config import ProxyConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The proxy needs no flags beyond the common ones (--config, --port, --host)."""


def load(args: argparse.Namespace) -> ProxyConfig:
    """The effective config: the file, then command-line overrides."""
    return load_component_config(ProxyConfig, args, example="config/proxy/development.yaml")


if __name__ == "__main__":
    run_component("proxy")
