"""Serve several aiohttp applications from one process and one event loop.

The agent answers on two ports (registry and agent server); ``kraken.http.app.serve`` runs
one. This generic helper could move there.
"""
from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from kraken.log import get_logger


async def serve_many(sites: list[tuple[web.Application, str, int]], component: str) -> None:
    """Run every ``(app, host, port)`` until SIGINT/SIGTERM, then clean them all up (their
    cleanup hooks run). If one cannot listen, the ones already started are cleaned up too."""
    log = get_logger(component)
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for app, host, port in sites:
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port, reuse_address=True).start()
            log.info("listening", host=host, port=port)
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for runner in reversed(runners):
            await runner.cleanup()
