"""``python -m kraken proxy --config FILE [--port N]``"""
from __future__ import annotations

import argparse

from kraken.cli import load_component_config, run_component
from kraken.http.server import serve
from kraken.proxy.config import ProxyConfig
from kraken.proxy.server import COMPONENT, create_proxy_app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The proxy needs no flags beyond the common ones (--config, --port, --host)."""


async def run(args: argparse.Namespace) -> None:
    config = load_component_config(ProxyConfig, args, example="config/proxy/development.yaml")
    await serve([(create_proxy_app(config), config.listen.host, config.listen.port)], COMPONENT, config.http)


if __name__ == "__main__":
    run_component("proxy")
