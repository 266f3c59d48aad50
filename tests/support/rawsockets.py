"""Raw-socket clients for tests of a server's connection handling: connections that read the
response head and then nothing (slow readers), and reading a response until the server closes.

Why raw sockets: an HTTP client library reads what it is sent; these play the stalled clients
a server must survive, which no library does on purpose.
"""
from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios

from kraken.registry.manifest import OCI_MANIFEST
from tests.support.waiting import wait_until


def slow_readers(host: str, port: int, path: str, count: int, accept: str = OCI_MANIFEST) -> list[socket.socket]:
    """``count`` connections that each GET ``path`` and read the response head, then nothing."""
    readers = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=60)
            readers.append(sock)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\n\r\n".encode())
        for sock in readers:
            head = sock.recv(1024)
            assert head.startswith(b"HTTP/1.1 200"), head[:100]
        _wait_stalled(readers)
    except BaseException:
        for sock in readers:
            sock.close()
        raise
    return readers


def _wait_stalled(readers: list[socket.socket], timeout: float = 60.0, polls: int = 5) -> None:
    """Until the bytes waiting in the readers' receive queues stop growing (``polls`` checks
    0.1 s apart agree): the server has sent what the sockets take and is stuck on the rest."""
    last, same = -1, 0

    def stalled() -> bool:
        nonlocal last, same
        queued = sum(struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0] for s in readers)
        same = same + 1 if queued == last else 0
        last = queued
        return same >= polls

    wait_until(stalled, timeout, 0.1, message="the server to stop sending to readers that read nothing")


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sent before it closed the connection (a reset counts as closed)."""
    data = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 16):
            data += chunk
    return bytes(data)
