"""The alert pump: libtorrent's alerts delivered to handlers on the event loop, without polling.

libtorrent writes a byte to a non-blocking pipe when its alert queue becomes non-empty
(``set_alert_fd``), ``loop.add_reader`` wakes the loop, and the reader drains the pipe and
then ``pop_alerts()``. Alert objects are only valid until the next ``pop_alerts()``, so
handlers copy what they need at once. Each part of the session subscribes the alert types it
cares about; one failing handler is logged and does not stop the others or the pump.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from kraken.log import KrakenLogger
from kraken.p2p.settings import NativeSession

AlertHandler = Callable[[Any], None]


class AlertPump:
    """Owns the alert pipe; dispatches each popped alert to the handlers of its type."""

    def __init__(self) -> None:
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._handlers: dict[type, list[AlertHandler]] = {}
        self._native: NativeSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log: KrakenLogger | None = None

    @property
    def fds(self) -> tuple[int, int]:
        """The pipe's (read, write) descriptors."""
        return self._rfd, self._wfd

    def subscribe(self, handlers: dict[type, AlertHandler]) -> None:
        """Call each handler with every alert of its type, in subscription order."""
        for alert_type, handler in handlers.items():
            self._handlers.setdefault(alert_type, []).append(handler)

    def start(self, native: NativeSession, log: KrakenLogger) -> None:
        """Have libtorrent signal the pipe and the loop watch it; deliver what is queued already."""
        self._native, self._log = native, log
        self._loop = asyncio.get_running_loop()
        native.get().set_alert_fd(self._wfd)
        self._loop.add_reader(self._rfd, self._on_readable)
        # The pipe only signals an empty queue becoming non-empty: take what is already queued.
        self.drain()

    def stop(self) -> None:
        """Stop watching the pipe (libtorrent may still write to it until its session is gone)."""
        if self._loop is not None:
            self._loop.remove_reader(self._rfd)

    def close(self) -> None:
        """Close the pipe: only once the session is destroyed, or was never created."""
        os.close(self._rfd)
        os.close(self._wfd)

    def _on_readable(self) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        self.drain()

    def drain(self) -> None:
        """Pop every queued alert and hand it to its handlers."""
        assert self._native is not None and self._log is not None, "the pump is not started"
        for alert in self._native.get().pop_alerts():
            for handler in self._handlers.get(type(alert), ()):
                try:
                    handler(alert)
                except Exception:  # noqa: BLE001 - one bad alert must not stop the pump
                    self._log.exception("failed to handle a libtorrent alert", alert=type(alert).__name__)
