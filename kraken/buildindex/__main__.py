"""``python -m kraken build-index --config FILE [--port N]``"""
from __future__ import annotations

import argparse

from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.server import COMPONENT, create_buildindex_app
from kraken.cli import load_component_config, run_component
from kraken.http.server import serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """build-index needs no flags beyond the common ones (--config, --port, --host)."""


async def run(args: argparse.Namespace) -> None:
    config = load_component_config(BuildIndexConfig, args, example="config/build-index/development.yaml")
    await serve([(create_buildindex_app(config), config.listen.host, config.listen.port)], COMPONENT, config.http)


if __name__ == "__main__":
    run_component("build-index")
