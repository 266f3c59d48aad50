"""Test helpers for the P2P tests (no tests here).

- :class:`AnnounceTrackerForTests`: a minimal BitTorrent HTTP tracker (BEP 3 announce, compact
  BEP 23 replies). It exists only so the session tests can run before the real tracker
  (``kraken/tracker/``) does; it has no peer expiry, no handout policy and no metainfo.
- :func:`make_blob`: a random blob on disk and its v1 metainfo.
- ``python -m tests.support.p2p download ...``: a downloader in its own process, which
  prints its result and its thread and descriptor counts before and after the session.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import struct
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import libtorrent as lt
from aiohttp import web

from kraken.config import ListenConfig
from kraken.core.metainfo import generate_metainfo
from kraken.metrics import Metrics
from kraken.p2p.config import P2PConfig
from kraken.p2p.session import P2PSession
from tests.support.waiting import wait_until

KiB = 1 << 10
MiB = 1 << 20


class AnnounceTrackerForTests:
    """Test helper: hands every announcing downloader the other peers of the same info-hash."""

    interval = 1

    def __init__(self) -> None:
        self.swarms: dict[bytes, dict[tuple[str, int], int]] = {}  # info_hash -> (ip, port) -> left
        self.announces = 0
        self.url = ""

    async def announce(self, request: web.Request) -> web.Response:
        # info_hash is raw bytes, percent-encoded: request.query would decode it as UTF-8, and
        # request.query_string is decoded once already (a hash byte '%' before two hex digits).
        params = {
            k: urllib.parse.unquote_to_bytes(v)
            for k, _, v in (part.partition("=") for part in request.rel_url.raw_query_string.split("&"))
        }
        info_hash = params["info_hash"]
        peer = (request.remote or "127.0.0.1", int(params["port"]))
        swarm = self.swarms.setdefault(info_hash, {})
        self.announces += 1
        if params.get("event") == b"stopped":
            swarm.pop(peer, None)
        else:
            swarm[peer] = int(params.get("left", b"0"))
        # Seeds get no peers (they only wait for downloaders to connect), so every connection
        # is opened by a downloader to the address the tracker handed out.
        left = swarm.get(peer, 0)
        others = sorted((p for p in swarm if p != peer), key=lambda p: swarm[p]) if left else []  # seeds first
        compact = b"".join(socket.inet_aton(ip) + struct.pack(">H", port) for ip, port in others)
        # Without "min interval" libtorrent waits 30 s before announcing again (measured).
        body = lt.bencode({b"interval": self.interval, b"min interval": self.interval, b"peers": compact})
        return web.Response(body=body, content_type="text/plain")


@asynccontextmanager
async def running_tracker() -> AsyncIterator[AnnounceTrackerForTests]:
    tracker = AnnounceTrackerForTests()
    app = web.Application()
    app.router.add_get("/announce", tracker.announce)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    tracker.url = f"http://127.0.0.1:{port}/announce"
    try:
        yield tracker
    finally:
        await runner.cleanup()


@dataclass
class Blob:
    path: Path
    data: bytes
    metainfo: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def make_blob(directory: Path, size: int, piece_length: int = 256 * KiB) -> Blob:
    """A random blob stored as ``<directory>/<sha256 hex>``, as origins and agents store them."""
    data = os.urandom(size)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / hashlib.sha256(data).hexdigest()
    path.write_bytes(data)
    return Blob(path, data, generate_metainfo(path, path.name, piece_length))


def loopback_config(**overrides: object) -> P2PConfig:
    """Loopback, an ephemeral port, and fast stats for tests."""
    values: dict = {"listen": ListenConfig(host="127.0.0.1", port=0), "stats_interval": 0.1, "min_announce_interval": 1}
    values.update(overrides)
    return P2PConfig(**values)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


SessionFactory = Callable[..., Awaitable[P2PSession]]


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


async def _download_main(args: argparse.Namespace) -> dict:
    metainfo = Path(args.metainfo).read_bytes()
    session = await P2PSession.start(loopback_config(), Metrics("p2p-subprocess"))
    session.set_origin_addresses(set(args.origin))
    try:
        result = await session.download(metainfo, Path(args.save_dir), args.tracker, timeout=args.timeout)
        digest = sha256_file(result.path)
    finally:
        await session.close()
    return {
        "sha256": digest,
        "size": result.size,
        "seconds": result.seconds,
        "downloaded_by_source": result.downloaded_by_source,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    download = sub.add_parser("download", help="download one torrent in this process, then report")
    download.add_argument("--metainfo", required=True)
    download.add_argument("--save-dir", required=True)
    download.add_argument("--tracker", required=True)
    download.add_argument("--timeout", type=float, default=30.0)
    download.add_argument("--origin", action="append", default=[], help="an origin's ip:port")
    args = parser.parse_args()
    threads_before, fds_before = _threads(), _fds()
    report = asyncio.run(_download_main(args))
    # asyncio.run has joined its executor threads; the session's threads must be gone too.
    # Python's join() returns before a joined thread's OS task is fully gone: give them a moment.
    # Past the moment, the report's counts show what is left.
    with suppress(TimeoutError):
        wait_until(lambda: _threads() <= threads_before, 5, 0.01, message="the session's threads to end")
    report.update(threads_before=threads_before, threads_after=_threads(), fds_before=fds_before, fds_after=_fds())
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
