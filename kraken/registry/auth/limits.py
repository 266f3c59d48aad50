"""Bounds on what password checking costs: a cache of recent successes and a per-client
failure limit.

bcrypt takes tens of milliseconds per check on purpose. Docker sends its credentials with
every request of a push, so :class:`VerifiedCache` remembers a success for a short time; its
key is an HMAC of the credentials under a key made at start, so neither the password nor a
hash an attacker could test guesses against offline is kept. :class:`FailureLimiter` caps
the failed checks one client address may cause per window, so guessing costs bounded work.
Both are bounded in entries, so neither grows with the number of clients.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable

Clock = Callable[[], float]


class VerifiedCache:
    """Credentials verified recently (up to ``max_entries``, each for ``ttl`` seconds)."""

    def __init__(self, ttl: float, max_entries: int = 1024, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, tuple[float, str]] = OrderedDict()

    def _digest(self, credentials: bytes) -> bytes:
        return hmac.new(self._key, credentials, hashlib.sha256).digest()

    def get(self, credentials: bytes) -> str | None:
        """The user these credentials were verified for, if that was less than ``ttl`` ago."""
        key = self._digest(credentials)
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, user = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        return user

    def put(self, credentials: bytes, user: str) -> None:
        if self.ttl <= 0:
            return
        key = self._digest(credentials)
        self._entries[key] = (self._clock() + self.ttl, user)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class FailureLimiter:
    """At most ``max_failures`` failures per client within ``window`` seconds.

    Failures are remembered for up to ``max_clients`` addresses; beyond that the longest
    quiet one is forgotten (an attacker with that many addresses is bounded per address
    anyway)."""

    def __init__(self, max_failures: int, window: float, max_clients: int = 10000,
                 clock: Clock = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        cutoff = self._clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None if it may now."""
        times = self._recent(client)
        if times is None or len(times) < self.max_failures:
            return None
        return times[0] + self.window - self._clock()

    def record(self, client: str) -> None:
        times = self._recent(client)
        if times is None:
            times = self._failures[client] = deque(maxlen=self.max_failures)
        times.append(self._clock())
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
