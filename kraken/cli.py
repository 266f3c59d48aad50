"""The ``kraken`` command: one subcommand per component.

Each component package has a ``__main__.py`` exposing ``add_arguments(parser)`` (its own
flags beyond the common ones) and ``async run(args)``; this module wires them into one
command line, sets up logging and runs the component until SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from typing import Any, TypeVar

from kraken.config import ConfigError, apply_listen_overrides, load_config
from kraken.log import setup_logging

T = TypeVar("T")

COMPONENTS = {
    "testfs": ("kraken.testfs.__main__", "simple HTTP file store used as a storage backend"),
    "origin": ("kraken.origin.__main__", "seeder: owns blobs on the hash ring, writes back to storage"),
    "build-index": ("kraken.buildindex.__main__", "tag -> digest index"),
    "proxy": ("kraken.proxy.__main__", "Docker Registry v2 for push (and pull)"),
    "tracker": ("kraken.tracker.__main__", "peer lists (origins included) and metainfo for agents"),
    "agent": ("kraken.agent.__main__", "per-host read-only registry backed by a P2P blob cache"),
}


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
    """The command line; only the chosen component's module is imported (for its own flags)."""
    parser = argparse.ArgumentParser(prog="kraken", description="Kraken P2P Docker/OCI registry")
    sub = parser.add_subparsers(dest="component", required=True, metavar="COMPONENT")
    for name, (module_name, help_text) in COMPONENTS.items():
        p = sub.add_parser(name, help=help_text, description=f"kraken {name}: {help_text}")
        p.add_argument("--config", help="YAML config file (may `extends:` others)")
        p.add_argument("--secrets", metavar="FILE", help="YAML file of credentials (`auth:`) merged over the config")
        p.add_argument("--port", type=int, help="listen port (overrides the config)")
        p.add_argument("--host", help="listen address (overrides the config)")
        p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen).parse_args(argv)
    setup_logging(args.log_level)
    try:
        asyncio.run(args._module.run(args))
    except ConfigError as e:
        print(f"kraken {args.component}: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def load_component_config(cls: type[T], args: argparse.Namespace, example: str | None = None) -> T:
    """The effective config: the ``--config`` file, the ``--secrets`` file merged over it, then
    ``--host``/``--port``. Without a config file, the dataclass defaults when ``example`` is
    None, else an error that shows the example."""
    if args.config or example is None:
        config: Any = load_config(cls, args.config or None, secrets=args.secrets)
    else:
        raise ConfigError(f"--config is required (e.g. {example})")
    apply_listen_overrides(config.listen, args.host, args.port)
    return config


def run_component(name: str) -> None:
    """Entry point for ``python -m kraken.<component>``."""
    sys.exit(main([name, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
