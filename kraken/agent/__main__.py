"""``python -m kraken agent --config FILE [--port N] [--server-port N] [--peer-ip IP] [--peer-port N]``

``--port`` is the registry's port, ``--server-port`` the agent server's, ``--peer-port`` the
P2P listen port. ``--peer-ip`` only labels log lines: the tracker takes every peer's address
from the announce's source IP, so an agent never announces ``localhost`` to other hosts.
"""
from __future__ import annotations

import argparse

from kraken.agent.config import AgentConfig
from kraken.cli import load_component_config, run_component


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server-port", type=int, help="agent server port (overrides server.port)")
    parser.add_argument("--peer-ip", help="this host's address as peers see it, for logs (overrides p2p.peer_ip)")
    parser.add_argument("--peer-port", type=int, help="P2P listen port (overrides p2p.listen.port)")


def apply_arguments(config: AgentConfig, args: argparse.Namespace) -> AgentConfig:
    """The agent's own flags on top of the config (``--host``/``--port`` are applied already)."""
    if args.host:
        config.server.host = args.host
    if args.server_port:
        config.server.port = args.server_port
    if args.peer_ip:
        config.p2p.peer_ip = args.peer_ip
    if args.peer_port:
        config.p2p.listen.port = args.peer_port
    return config


def load(args: argparse.Namespace) -> AgentConfig:
    """The effective config: the file, then command-line overrides."""
    return apply_arguments(load_component_config(AgentConfig, args, example="config/agent/development.yaml"), args)


if __name__ == "__main__":
    run_component("agent")
