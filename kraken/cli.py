"""The ``kraken`` command: one subcommand per component, ``check-config`` and ``--version``.

Each component package has a ``__main__.py`` exposing ``add_arguments(parser)`` (its own
flags beyond the common ones) and ``load(args)`` (its effective config), and a ``server.py``
exposing ``COMPONENT`` and ``sites(config)``; this module wires them into one command line,
sets up logging and runs every component the same way (:func:`run`) until SIGINT/SIGTERM.
``kraken check-config COMPONENT --config FILE`` loads the config as that component would at
start (same flags, same loading) and starts nothing: a deployment checks a file before a
restart, the devcluster before it starts anything.

A config error exits with :data:`CONFIG_ERROR` (2, like argparse's usage errors), from a
component's start and from ``check-config`` alike.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import sys
from types import ModuleType
from typing import Any, TypeVar

from kraken.config import ConfigError, apply_listen_overrides, load_config
from kraken.heap import trimming
from kraken.http.server import serve
from kraken.log import setup_logging

T = TypeVar("T")

#: Subcommand -> (component package, help).
COMPONENTS = {
    "testfs": ("kraken.testfs", "simple HTTP file store used as a storage backend"),
    "origin": ("kraken.origin", "seeder: owns blobs on the hash ring, writes back to storage"),
    "build-index": ("kraken.buildindex", "tag -> digest index"),
    "proxy": ("kraken.proxy", "Docker Registry v2 for push (and pull)"),
    "tracker": ("kraken.tracker", "peer lists (origins included) and metainfo for agents"),
    "agent": ("kraken.agent", "per-host read-only registry backed by a P2P blob cache"),
}


CHECK_CONFIG = "check-config"
#: The exit status of a config error (argparse exits 2 on a usage error too).
CONFIG_ERROR = 2


def version() -> str:
    """The installed package's version (pyproject.toml's, through the package metadata)."""
    try:
        return importlib.metadata.version("kraken")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
    """The command line; only the chosen component's module is imported (for its own flags)."""
    parser = argparse.ArgumentParser(prog="kraken", description="Kraken P2P Docker/OCI registry")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="component", required=True, metavar="COMPONENT")
    check = sub.add_parser(CHECK_CONFIG, help="load and validate a component's config; start nothing",
                           description="kraken check-config COMPONENT --config FILE [the component's flags]: "
                                       "load the config as the component would at start, print OK or the "
                                       "error (file and key); exit 0 or 2.")
    check.add_argument("target", metavar="COMPONENT", choices=list(COMPONENTS))
    check.add_argument("rest", nargs=argparse.REMAINDER, help="--config FILE and any of the component's flags")
    for name, (package, help_text) in COMPONENTS.items():
        p = sub.add_parser(name, help=help_text, description=f"kraken {name}: {help_text}")
        p.add_argument("--config", help="YAML config file (may `extends:` others)")
        p.add_argument("--secrets", metavar="FILE", help="YAML file of credentials (`auth:`) merged over the config")
        p.add_argument("--port", type=int, help="listen port (overrides the config)")
        p.add_argument("--host", help="listen address (overrides the config)")
        p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
        if name == chosen:
            module = importlib.import_module(f"{package}.__main__")
            module.add_arguments(p)
            p.set_defaults(_module=module, _server=f"{package}.server")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen).parse_args(argv)
    if args.component == CHECK_CONFIG:
        return check_config_main([args.target, *args.rest])
    setup_logging(args.log_level)
    try:
        asyncio.run(run(importlib.import_module(args._server), component_config(args)))
    except ConfigError as e:
        print(f"kraken {args.component}: config error: {e}", file=sys.stderr)
        return CONFIG_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


async def run(server: ModuleType, config: Any) -> None:
    """Every component runs this way: the apps of its ``server.sites(config)``, served until
    SIGINT/SIGTERM (made inside the loop, which their parts may need), with the heap given back
    to the system as it grows (:mod:`kraken.heap`)."""
    async with trimming():
        await serve(server.sites(config), server.COMPONENT, config.http)


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


def component_config(args: argparse.Namespace) -> Any:
    """The effective config of ``args``'s component, loaded exactly as it is loaded at start
    (every component's ``__main__`` has ``load(args)``)."""
    return args._module.load(args)


def check_config_args(argv: list[str]) -> str | None:
    """The error ``kraken COMPONENT ...`` (``argv``) would stop at when loading its config, or None."""
    args = build_parser(argv[0]).parse_args(argv)
    try:
        component_config(args)
    except ConfigError as e:
        return str(e)
    return None


def check_config_main(argv: list[str]) -> int:
    """``kraken check-config COMPONENT --config FILE ...``: 0 and ``OK``, or
    :data:`CONFIG_ERROR` and the error."""
    component = argv[0]
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        print(f"kraken check-config {component}: --config FILE is required", file=sys.stderr)
        return CONFIG_ERROR
    error = check_config_args(argv)
    if error is not None:
        print(f"kraken check-config {component}: config error: {error}", file=sys.stderr)
        return CONFIG_ERROR
    print(f"kraken check-config {component}: OK")
    return 0


def run_component(name: str) -> None:
    """Entry point for ``python -m kraken.<component>``."""
    sys.exit(main([name, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
