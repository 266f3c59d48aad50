"""A caller from somewhere other than loopback, without a second host.

Linux accepts a connection to 127.0.0.1 from a socket bound to one of the host's other
addresses, and the server sees that address as the peer: enough to test what a server does
with callers that are not local (allow-lists, cluster-peer checks) with real sockets.
"""
from __future__ import annotations

import ipaddress
import socket

import aiohttp
import pytest


def non_loopback_address() -> str:
    """One of this host's own non-loopback IPv4 addresses (the default route's source), or
    skip the test when it has none."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("198.51.100.1", 9))  # no packet is sent: this only picks the route
            address = str(s.getsockname()[0])
    except OSError as e:
        pytest.skip(f"no non-loopback IPv4 address: {e}")
    if ipaddress.ip_address(address).is_loopback or address == "0.0.0.0":
        pytest.skip("no non-loopback IPv4 address")
    return address


def session_from(address: str) -> aiohttp.ClientSession:
    """A client session whose connections come from ``address``."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)),
                                 timeout=aiohttp.ClientTimeout(total=30))
