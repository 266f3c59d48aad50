"""``python -m kraken proxy --config FILE [--port N]``"""
from __future__ import annotations

import argparse

from kraken.config import ConfigError, apply_listen_overrides, load_config
from kraken.http.app import serve
from kraken.proxy.config import ProxyConfig
from kraken.proxy.server import COMPONENT, create_proxy_app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The proxy needs no flags beyond the common ones (--config, --port, --host)."""


async def run(args: argparse.Namespace) -> None:
    if not args.config:
        raise ConfigError("--config is required (e.g. config/proxy/development.yaml)")
    config = load_config(ProxyConfig, args.config)
    apply_listen_overrides(config.listen, args.host, args.port)
    await serve(create_proxy_app(config), config.listen.host, config.listen.port, COMPONENT)


if __name__ == "__main__":
    from kraken.cli import run_component

    run_component("proxy")
