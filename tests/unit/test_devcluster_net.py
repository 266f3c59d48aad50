"""free_port: ports for servers a test or the devcluster starts in a moment."""
from __future__ import annotations

from kraken.devcluster import free_port
from kraken.devcluster.net import port_free


def test_free_port_never_hands_out_the_same_port_twice() -> None:
    # Nothing listens on a port between the call and the server's start: several calls in a
    # row (one cluster's ports) must still get distinct ones.
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert all(port_free(port) for port in ports[:20])
