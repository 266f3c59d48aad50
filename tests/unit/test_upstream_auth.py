"""Challenge parsing and token caching of the pull-through backends (no network)."""
from __future__ import annotations

import aiohttp
import pytest

from kraken.backend.upstream.auth import AuthFailed, RegistryAuth, TokenCache, TokenKey, token_lifetime
from kraken.backend.upstream.challenge import Challenge, ChallengeError, parse_challenges
from kraken.http.client import create_client
from kraken.http.config import HttpClientConfig


def test_docker_hub_challenge() -> None:
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/alpine:pull"')
    assert parse_challenges([header]) == [Challenge("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull"})]


@pytest.mark.parametrize("headers,expected", [
    (['Basic realm="registry"'], [Challenge("basic", {"realm": "registry"})]),
    (['basic REALM=x'], [Challenge("basic", {"realm": "x"})]),
    # Several challenges in one header, commas inside quoted values, escapes.
    (['Basic realm="a, b", Bearer realm="https://t/x?a=1,2",service="s \\"q\\""'],
     [Challenge("basic", {"realm": "a, b"}), Challenge("bearer", {"realm": "https://t/x?a=1,2", "service": 's "q"'})]),
    # Several headers; a scheme without parameters; a token68; blanks around "=" and ",".
    (["Negotiate", 'Basic abc==, Bearer realm = "r" , service=s'],
     [Challenge("negotiate"), Challenge("basic"), Challenge("bearer", {"realm": "r", "service": "s"})]),
    ([""], []),
])
def test_challenge_lists(headers: list[str], expected: list[Challenge]) -> None:
    assert parse_challenges(headers) == expected


@pytest.mark.parametrize("header", ['Bearer realm="open', "Bearer realm=", "=x", 'Bearer realm="x" junk"'])
def test_malformed_challenges(header: str) -> None:
    with pytest.raises(ChallengeError):
        parse_challenges([header])


def test_token_cache_expiry_and_bound() -> None:
    now = [1000.0]
    cache = TokenCache(max_size=2, clock=lambda: now[0])
    a, b, c = (TokenKey("r", "s", f"repository:{n}:pull") for n in "abc")
    cache.put(a, "ta", 100)
    assert cache.get(a) == "ta"
    now[0] += 89.9
    assert cache.get(a) == "ta"
    now[0] += 0.2  # 90% of its lifetime gone: not used any more
    assert cache.get(a) is None and len(cache) == 0
    cache.put(a, "ta", 100)
    cache.put(b, "tb", 100)
    assert cache.get(a) == "ta"  # a is now the most recently used
    cache.put(c, "tc", 100)
    assert len(cache) == 2 and cache.get(b) is None and cache.get(a) == "ta" and cache.get(c) == "tc"
    cache.drop(c)
    assert cache.get(c) is None


@pytest.mark.parametrize("body,expected", [({}, 60.0), ({"expires_in": 300}, 300.0), ({"expires_in": 5}, 60.0),
                                           ({"expires_in": "300"}, 60.0), ({"expires_in": True}, 60.0)])
def test_token_lifetime(body: dict[str, object], expected: float) -> None:
    assert token_lifetime(body) == expected


async def test_basic_challenge_flow() -> None:
    http = create_client(HttpClientConfig())
    try:
        anonymous = RegistryAuth(http, None, aiohttp.ClientTimeout(total=5))
        with pytest.raises(AuthFailed, match="security.basic is not configured"):
            anonymous.challenged(['Basic realm="r"'], "repository:x:pull", {})
        auth = RegistryAuth(http, ("alice", "pw"), aiohttp.ClientTimeout(total=5))
        assert await auth.headers("repository:x:pull") == {}
        auth.challenged(['Basic realm="r"'], "repository:x:pull", {})
        sent = await auth.headers("repository:x:pull")
        assert sent == {"Authorization": "Basic YWxpY2U6cHc="}
        with pytest.raises(AuthFailed, match="refused the credentials of user 'alice'"):
            auth.challenged(['Basic realm="r"'], "repository:x:pull", sent)
        with pytest.raises(AuthFailed, match="unsupported"):
            auth.challenged(["Negotiate"], "repository:x:pull", {})
        with pytest.raises(AuthFailed, match="unreadable"):
            auth.challenged(['Bearer realm="x'], "repository:x:pull", {})
    finally:
        await http.close()


async def test_refused_token_is_dropped() -> None:
    http = create_client(HttpClientConfig())
    try:
        cache = TokenCache()
        auth = RegistryAuth(http, None, aiohttp.ClientTimeout(total=5), cache)
        challenge = 'Bearer realm="https://auth.example/token",service="reg"'
        auth.challenged([challenge], "repository:x:pull", {})
        key = TokenKey("https://auth.example/token", "reg", "repository:x:pull")
        cache.put(key, "tok", 300)
        sent = await auth.headers("repository:x:pull")  # cached: no token request
        assert sent == {"Authorization": "Bearer tok"}
        with pytest.raises(AuthFailed, match="refused the token.*anonymous access"):
            auth.challenged([challenge], "repository:x:pull", sent)
        assert cache.get(key) is None
    finally:
        await http.close()


@pytest.mark.parametrize("realm,match", [("file:///etc/passwd", "not an http"), ("/token", "not an http"),
                                         ("http://auth.example/token", "plain HTTP")])
async def test_credentials_never_go_to_an_unsafe_realm(realm: str, match: str) -> None:
    """A Bearer realm must be an http(s) URL, and never plain HTTP for an HTTPS upstream
    when the Basic credentials would be sent to it."""
    http = create_client(HttpClientConfig())
    try:
        auth = RegistryAuth(http, ("alice", "pw"), aiohttp.ClientTimeout(total=5), secure=True)
        with pytest.raises(AuthFailed, match=match):
            auth.challenged([f'Bearer realm="{realm}"'], "repository:x:pull", {})
        anonymous = RegistryAuth(http, None, aiohttp.ClientTimeout(total=5), secure=True)
        anonymous.challenged(['Bearer realm="http://auth.example/token"'], "repository:x:pull", {})
    finally:
        await http.close()
