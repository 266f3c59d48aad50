"""Where a client finds build-index (the ``build_index:`` section of the proxy's and the
agents' configs): one address, a list, or a DNS name, as every host list
(:mod:`kraken.http.hostlist`). Several build-index nodes share one tag backend, so any of them
answers any request (:class:`kraken.buildindex.client.BuildIndexClient` fails over)."""
from __future__ import annotations

from dataclasses import dataclass

from kraken.http.hostlist import HostListConfig

DEFAULT_ADDR = "localhost:15004"


@dataclass
class BuildIndexHostsConfig(HostListConfig):
    """:class:`HostListConfig` whose ``addr`` defaults to the local build-index; one of
    ``addr``, ``addrs`` and ``dns`` is required."""

    addr: str = DEFAULT_ADDR

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.configured():
            raise ValueError("give addr, addrs or dns")
