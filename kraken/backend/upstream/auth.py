"""Authentication to an upstream registry: Basic, or Docker's token protocol.

A request goes out with what the registry asked for last time (nothing at first). On a 401
the registry's challenge (:mod:`kraken.backend.upstream.challenge`) says what to do:

- ``Basic``: send the configured username and password (none configured: a clear error);
- ``Bearer realm=...,service=...``: get a token for the repository's ``pull`` scope from
  ``realm`` (with the configured credentials, anonymously without) and send it.

The request is then sent once more; a second 401 means the credentials or the token were
refused. The configured credentials go only where they cannot leak: a realm must be an
http(s) URL, and never plain HTTP when the upstream is HTTPS (a MITM would read them there);
a challenge only counts when the upstream itself sent it (:mod:`.client` refuses a 401 from a
host a redirect led to). Docker learns challenges from the registry's own ``/v2/`` only,
which amounts to the same. Tokens are cached per (realm, service, scope) until shortly before they expire, in a
bounded table (the least recently used is dropped), so pulling an image costs one token
request per repository, not one per blob; concurrent requests of one scope share one token
request.
"""
from __future__ import annotations

import base64
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from kraken.backend.readonly import read_capped
from kraken.backend.upstream.challenge import Challenge, ChallengeError, parse_challenges
from kraken.http.client import HttpClient, HTTPStatusError
from kraken.tasks import SingleFlight

#: What a token server's ``expires_in`` defaults to, and the least a client may assume
#: (the token protocol's rule).
DEFAULT_TOKEN_TTL = 60.0
#: A token is used only until this fraction of its lifetime has passed (clocks differ, and a
#: request sent just before expiry may arrive after it).
TOKEN_USE_FRACTION = 0.9
MAX_TOKENS = 1024
#: Largest token answer read (a token is a few KiB; Docker Hub's are about 5).
MAX_TOKEN_ANSWER = 1 << 20


class AuthFailed(Exception):
    """The upstream refused us, and retrying with the same configuration cannot help."""


@dataclass(frozen=True)
class TokenKey:
    realm: str
    service: str
    scope: str


class TokenCache:
    """Tokens by :class:`TokenKey` until their use-by time, at most ``max_size`` of them."""

    def __init__(self, max_size: int = MAX_TOKENS, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_size = max_size
        self._clock = clock
        self._tokens: OrderedDict[TokenKey, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, key: TokenKey) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, use_by = entry
        if self._clock() >= use_by:
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return token

    def put(self, key: TokenKey, token: str, expires_in: float) -> None:
        self._tokens[key] = (token, self._clock() + expires_in * TOKEN_USE_FRACTION)
        self._tokens.move_to_end(key)
        while len(self._tokens) > self._max_size:
            self._tokens.popitem(last=False)

    def drop(self, key: TokenKey) -> None:
        self._tokens.pop(key, None)


def token_lifetime(body: Mapping[str, object]) -> float:
    """Seconds a token answer is valid: ``expires_in``, never less than the protocol's 60."""
    value = body.get("expires_in")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(float(value), DEFAULT_TOKEN_TTL)
    return DEFAULT_TOKEN_TTL


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class RegistryAuth:
    """The ``Authorization`` headers for one upstream registry (one per backend)."""

    def __init__(self, http: HttpClient, basic: tuple[str, str] | None,
                 timeout: aiohttp.ClientTimeout, tokens: TokenCache | None = None, *, secure: bool = True) -> None:
        self._http = http
        self._basic = basic
        #: The upstream is reached over HTTPS: the credentials never go out over plain HTTP.
        self._secure = secure
        self._timeout = timeout
        self._tokens = tokens if tokens is not None else TokenCache()
        self._fetching: SingleFlight[TokenKey, str] = SingleFlight(report_orphans=False)
        #: What the registry asked for last (None: nothing yet).
        self._challenge: Challenge | None = None

    async def headers(self, scope: str) -> dict[str, str]:
        """The headers to send for a request needing ``scope`` (may request a token)."""
        challenge = self._challenge
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            assert self._basic is not None
            return {"Authorization": basic_header(*self._basic)}
        key = TokenKey(challenge.realm, challenge.params.get("service", ""), scope)
        token = self._tokens.get(key) or await self._fetching.run(key, lambda: self._fetch_token(key))
        return {"Authorization": f"Bearer {token}"}

    def challenged(self, values: list[str], scope: str, sent: Mapping[str, str]) -> None:
        """Learn from a 401 with ``WWW-Authenticate`` ``values`` to a request that carried
        ``sent``; raises :class:`AuthFailed` when sending it again cannot succeed."""
        try:
            challenges = parse_challenges(values)
        except ChallengeError as e:
            raise AuthFailed(f"unreadable WWW-Authenticate challenge: {e}") from None
        by_scheme = {c.scheme: c for c in challenges}
        bearer = by_scheme.get("bearer")
        previous = sent.get("Authorization", "")
        if bearer is not None and bearer.realm:
            self._check_realm(bearer.realm)
            key = TokenKey(bearer.realm, bearer.params.get("service", ""), scope)
            if previous.startswith("Bearer "):
                self._tokens.drop(key)
                who = f"user {self._basic[0]!r}" if self._basic else "anonymous access (see security.basic)"
                raise AuthFailed(f"the registry refused the token for {scope!r}: the repository does not exist, "
                                 f"or {who} may not pull it")
            self._challenge = bearer
            return
        if "basic" in by_scheme:
            if self._basic is None:
                raise AuthFailed("the registry asks for credentials (Basic) and security.basic is not configured")
            if previous.startswith("Basic "):
                raise AuthFailed(f"the registry refused the credentials of user {self._basic[0]!r}")
            self._challenge = by_scheme["basic"]
            return
        raise AuthFailed(f"unsupported authentication challenge {values!r}")

    def _check_realm(self, realm: str) -> None:
        """Refuse a token realm the credentials must not be sent to (the realm is the
        upstream's word, and only as trustworthy as the channel it came over)."""
        url = urlsplit(realm)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise AuthFailed(f"the token realm {realm[:200]!r} is not an http(s) URL")
        if url.scheme == "http" and self._secure and self._basic is not None:
            raise AuthFailed(f"the token realm {realm[:200]!r} is plain HTTP while the upstream is HTTPS: "
                             f"the credentials of user {self._basic[0]!r} are not sent over it")

    async def _fetch_token(self, key: TokenKey) -> str:
        params = {"scope": key.scope, **({"service": key.service} if key.service else {})}
        headers = {"Authorization": basic_header(*self._basic)} if self._basic else {}
        try:
            async with await self._http.request("GET", key.realm, params=params, headers=headers,
                                                timeout=self._timeout) as resp:
                body = json.loads(await read_capped(resp, f"the token server {key.realm}", MAX_TOKEN_ANSWER))
        except HTTPStatusError as e:
            if e.status in (401, 403):
                who = f"user {self._basic[0]!r}" if self._basic else "anonymous access"
                raise AuthFailed(f"the token server {key.realm} refused {who}: HTTP {e.status}") from None
            raise
        except ValueError as e:
            raise AuthFailed(f"the token server {key.realm} sent no JSON: {e}") from None
        if not isinstance(body, dict):
            raise AuthFailed(f"the token server {key.realm} sent no JSON object")
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthFailed(f"the token server {key.realm} sent no token")
        self._tokens.put(key, token, token_lifetime(body))
        return token
