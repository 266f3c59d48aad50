"""Basic authentication against an htpasswd file, as distribution's ``auth.htpasswd`` does.

Only bcrypt entries (``htpasswd -B``: ``$2y$``, ``$2a$``, ``$2b$``) are accepted, like
distribution; other lines are skipped with a warning that names the user, never the hash.
Checks run in a worker thread (a bcrypt check takes tens of milliseconds), at most
``_MAX_CONCURRENT_CHECKS`` at once; an unknown user costs the same check as a known one, so
timing does not tell which users exist.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import re
from pathlib import Path

import bcrypt
from aiohttp import web

from kraken.config import ConfigError
from kraken.log import get_logger
from kraken.registry.auth.access import Access, quote_param, too_many_failures, unauthorized
from kraken.registry.auth.config import HtpasswdConfig
from kraken.registry.auth.limits import FailureLimiter, VerifiedCache

log = get_logger("kraken.registry.auth")

_BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_MAX_CONCURRENT_CHECKS = 2
# bcrypt uses the first 72 bytes of a password (htpasswd and Go's bcrypt read no further).
_BCRYPT_MAX_PASSWORD = 72


def parse_htpasswd(text: str, source: str = "htpasswd") -> dict[str, bytes]:
    """``user -> bcrypt hash`` from htpasswd text; blank and ``#`` lines are skipped."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            log.warning("htpasswd line ignored: not user:hash", file=source, line=number)
            continue
        if not _BCRYPT_RE.match(hashed):
            log.warning("htpasswd entry ignored: not a bcrypt hash (use htpasswd -B)", file=source,
                        line=number, user=user)
            continue
        users[user] = hashed.encode()
    return users


def load_htpasswd(path: str) -> dict[str, bytes]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"auth.htpasswd.path: cannot read {path}: {e.strerror}") from None
    users = parse_htpasswd(text, path)
    if not users:
        raise ConfigError(f"auth.htpasswd.path: {path} has no bcrypt entries")
    return users


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` value, None if it is not one."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class HtpasswdAuthenticator:
    """Every request must carry Basic credentials of a user in the file; any valid user may
    do anything (distribution's htpasswd has no per-repository rules either)."""

    def __init__(self, config: HtpasswdConfig, users: dict[str, bytes] | None = None) -> None:
        self.realm = config.realm
        self.users = users if users is not None else load_htpasswd(config.path)
        self.cache = VerifiedCache(config.cache_ttl)
        self.failures = FailureLimiter(config.max_failures, config.failure_window)
        self._checks = asyncio.Semaphore(_MAX_CONCURRENT_CHECKS)
        self._decoy: bytes | None = None
        log.info("registry auth: htpasswd", realm=self.realm, users=len(self.users))

    @property
    def challenge(self) -> str:
        return f"Basic realm={quote_param(self.realm)}"

    async def authenticate(self, request: web.Request, access: list[Access]) -> str:
        """The user name, or a 401 (no or wrong credentials) / 429 (too many failures)."""
        header = request.headers.get("Authorization", "")
        credentials = basic_credentials(header)
        if credentials is None:
            raise unauthorized(self.challenge)
        cache_key = header.strip().encode()
        user = self.cache.get(cache_key)
        if user is not None:
            return user
        client = request.remote or ""
        wait = self.failures.retry_after(client)
        if wait is not None:
            raise too_many_failures(wait)
        if await self.verify(*credentials):
            self.cache.put(cache_key, credentials[0])
            return credentials[0]
        self.failures.record(client)
        log.warning("registry auth failed", client=client, user=credentials[0][:100])
        raise unauthorized(self.challenge, "invalid username or password")

    async def verify(self, user: str, password: str) -> bool:
        """Whether ``password`` is ``user``'s, checked in a worker thread."""
        hashed = self.users.get(user)
        secret = password.encode()[:_BCRYPT_MAX_PASSWORD]
        async with self._checks:
            if hashed is None:
                await asyncio.to_thread(self._check_decoy, secret)
                return False
            return await asyncio.to_thread(bcrypt.checkpw, secret, hashed)

    def _check_decoy(self, secret: bytes) -> None:
        """Spend what a real check costs (the cost of the file's first entry)."""
        if self._decoy is None:
            rounds = int(next(iter(self.users.values()))[4:6])
            self._decoy = bcrypt.hashpw(b"decoy", bcrypt.gensalt(rounds=rounds))
        bcrypt.checkpw(secret, self._decoy)
