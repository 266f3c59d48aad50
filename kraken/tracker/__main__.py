"""``python -m kraken tracker --config FILE [--port N]``"""
from __future__ import annotations

import argparse

from kraken.cli import load_component_config, run_component
from kraken.http.server import serve
from kraken.tracker.config import TrackerConfig
from kraken.tracker.server import COMPONENT, create_tracker_app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tracker needs no flags beyond the common ones (--config, --port, --host)."""


async def run(args: argparse.Namespace) -> None:
    config = load_component_config(TrackerConfig, args, example="config/tracker/development.yaml")
    await serve([(create_tracker_app(config), config.listen.host, config.listen.port)], COMPONENT, config.http)


if __name__ == "__main__":
    run_component("tracker")
