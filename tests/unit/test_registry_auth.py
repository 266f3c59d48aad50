"""Push authentication's parts in process: the htpasswd parser and checks, the bounds on
bcrypt work (cache, failure limit), the token checks (signature, claims, scopes), the
challenges, and the registry app asking its authenticator on every /v2 route."""
from __future__ import annotations

import base64
import datetime
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import bcrypt
import jwt
import pytest
from aiohttp.test_utils import TestServer, make_mocked_request
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from kraken.config import ConfigError, build, load_config
from kraken.http.app import create_app
from kraken.proxy.config import ProxyConfig
from kraken.registry.app import add_registry_routes
from kraken.registry.auth import Access, AuthConfig, HtpasswdConfig, TokenConfig, required_access
from kraken.registry.auth.htpasswd import HtpasswdAuthenticator, basic_credentials, parse_htpasswd
from kraken.registry.auth.limits import FailureLimiter, VerifiedCache
from kraken.registry.auth.token import InvalidToken, TokenAuthenticator, granted
from kraken.registry.errors import RegistryError
from kraken.store.cas import CAStore
from tests.support.localstorage import LocalStorage
from tests.support.tokenserver import SigningKey, TokenIssuer, write_htpasswd

SERVICE = "registry.test"
ISSUER = "issuer.test"
REALM = "https://auth.test/token"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _request(authorization: str | None = None, remote: str = "10.0.0.1") -> aiohttp.web.Request:
    headers = {"Authorization": authorization} if authorization else {}
    request = make_mocked_request("GET", "/v2/", headers=headers)
    return request.clone(remote=remote)


# ---- htpasswd --------------------------------------------------------------------------------

def test_parse_htpasswd_keeps_bcrypt_entries_only() -> None:
    good = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
    text = "\n".join([
        "# a comment", "", f"alice:{good}", "bob:$apr1$abcdefgh$0123456789abcdefghijkl",
        "carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "no-colon-line", f"dave:{good}",
    ])
    assert parse_htpasswd(text) == {"alice": good.encode(), "dave": good.encode()}


def test_basic_credentials() -> None:
    assert basic_credentials(_basic("u", "p:with:colons")) == ("u", "p:with:colons")
    assert basic_credentials("basic " + base64.b64encode(b"u:").decode()) == ("u", "")
    assert basic_credentials("Bearer abc") is None
    assert basic_credentials("Basic !!!") is None
    assert basic_credentials("Basic " + base64.b64encode(b"no-colon").decode()) is None


@pytest.fixture
def htpasswd(tmp_path: Path) -> HtpasswdAuthenticator:
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "right-pw"}, rounds=4)
    return HtpasswdAuthenticator(HtpasswdConfig(realm="kraken", path=str(path), max_failures=3))


async def test_htpasswd_challenge_wrong_and_right(htpasswd: HtpasswdAuthenticator) -> None:
    with pytest.raises(RegistryError) as none:
        await htpasswd.authenticate(_request(), [])
    assert none.value.status == 401 and none.value.code == "UNAUTHORIZED"
    assert none.value.headers["WWW-Authenticate"] == 'Basic realm="kraken"'
    with pytest.raises(RegistryError) as wrong:
        await htpasswd.authenticate(_request(_basic("alice", "nope")), [])
    assert wrong.value.status == 401 and "WWW-Authenticate" in wrong.value.headers
    with pytest.raises(RegistryError):
        await htpasswd.authenticate(_request(_basic("mallory", "right-pw")), [])
    assert await htpasswd.authenticate(_request(_basic("alice", "right-pw")), []) == "alice"
    long_password = "x" * 100
    assert not await htpasswd.verify("alice", long_password)  # truncated like htpasswd, not an error


async def test_htpasswd_caches_success_not_the_password(htpasswd: HtpasswdAuthenticator,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: calls.append(1) or real(pw, h))
    for _ in range(5):
        assert await htpasswd.authenticate(_request(_basic("alice", "right-pw")), []) == "alice"
    assert len(calls) == 1
    assert len(htpasswd.cache) == 1
    assert b"right-pw" not in repr(htpasswd.cache._entries).encode()
    assert _basic("alice", "right-pw").encode() not in htpasswd.cache._entries


async def test_htpasswd_failure_bound_per_client(htpasswd: HtpasswdAuthenticator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    htpasswd.failures = FailureLimiter(3, 60.0, clock=clock)
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: calls.append(1) or real(pw, h))
    for _ in range(3):
        with pytest.raises(RegistryError) as e:
            await htpasswd.authenticate(_request(_basic("alice", "guess")), [])
        assert e.value.status == 401
    checks = len(calls)
    with pytest.raises(RegistryError) as limited:
        await htpasswd.authenticate(_request(_basic("alice", "right-pw")), [])
    assert limited.value.status == 429 and limited.value.code == "TOOMANYREQUESTS"
    assert limited.value.headers["Retry-After"] == "60"
    assert len(calls) == checks  # a limited client costs no bcrypt work
    # Another address is not affected; after the window the first may try again.
    assert await htpasswd.authenticate(_request(_basic("alice", "right-pw"), remote="10.0.0.2"), []) == "alice"
    clock.now += 61
    htpasswd.cache = VerifiedCache(0)
    assert await htpasswd.authenticate(_request(_basic("alice", "right-pw")), []) == "alice"


def test_verified_cache_expires_and_is_bounded() -> None:
    clock = Clock()
    cache = VerifiedCache(ttl=10, max_entries=2, clock=clock)
    cache.put(b"a", "ua")
    cache.put(b"b", "ub")
    cache.put(b"c", "uc")
    assert len(cache) == 2 and cache.get(b"a") is None and cache.get(b"c") == "uc"
    clock.now += 11
    assert cache.get(b"c") is None


def test_failure_limiter_forgets_quiet_clients_beyond_its_bound() -> None:
    clock = Clock()
    limiter = FailureLimiter(1, 60, max_clients=2, clock=clock)
    for client in ("a", "b", "c"):
        limiter.record(client)
    assert limiter.retry_after("a") is None
    assert limiter.retry_after("c") == 60
    clock.now += 30
    assert limiter.retry_after("c") == 30


# ---- access ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "method", "query", "scopes"), [
    ("base", "GET", {}, []),
    ("catalog", "GET", {}, ["registry:catalog:*"]),
    ("manifest", "GET", {}, ["repository:a/b:pull"]),
    ("manifest", "HEAD", {}, ["repository:a/b:pull"]),
    ("blob", "GET", {}, ["repository:a/b:pull"]),
    ("tags", "GET", {}, ["repository:a/b:pull"]),
    ("manifest", "PUT", {}, ["repository:a/b:pull,push"]),
    ("manifest", "DELETE", {}, ["repository:a/b:pull,push"]),
    ("uploads", "POST", {}, ["repository:a/b:pull,push"]),
    ("upload", "GET", {}, ["repository:a/b:pull,push"]),
    ("uploads", "POST", {"mount": "sha256:00", "from": "c/d"}, ["repository:a/b:pull,push", "repository:c/d:pull"]),
    ("uploads", "POST", {"mount": "sha256:00", "from": "BAD NAME"}, ["repository:a/b:pull,push"]),
])
def test_required_access(kind: str, method: str, query: dict[str, str], scopes: list[str]) -> None:
    assert [a.scope for a in required_access(kind, method, "a/b", query)] == scopes


def test_granted() -> None:
    claims = {"access": [{"type": "repository", "name": "a/b", "actions": ["pull"]},
                         {"type": "repository", "name": "a/b", "actions": ["push"]},
                         {"type": "repository", "name": "c", "actions": ["*"]}, "junk"]}
    assert granted(claims, Access("repository", "a/b", ("pull", "push")))
    assert granted(claims, Access("repository", "c", ("pull", "push")))
    assert not granted(claims, Access("repository", "a/bc", ("pull",)))
    assert not granted({"access": [{"type": "repository", "name": "x", "actions": ["pull"]}]},
                       Access("repository", "x", ("pull", "push")))
    assert not granted({}, Access("registry", "catalog", ("*",)))


# ---- token -----------------------------------------------------------------------------------

@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer(ISSUER, SERVICE, SigningKey.generate())


@pytest.fixture
def token_auth(issuer: TokenIssuer) -> TokenAuthenticator:
    config = TokenConfig(realm=REALM, service=SERVICE, issuer=ISSUER, rootcertbundle="unused")
    return TokenAuthenticator(config, [issuer.signer.cert])


PUSH_AB = [Access("repository", "a/b", ("pull", "push"))]
GRANT_AB = [{"type": "repository", "name": "a/b", "actions": ["pull", "push"]}]


async def test_token_challenge_and_scopes(token_auth: TokenAuthenticator, issuer: TokenIssuer) -> None:
    with pytest.raises(RegistryError) as none:
        await token_auth.authenticate(_request(), PUSH_AB)
    assert none.value.status == 401
    assert none.value.headers["WWW-Authenticate"] == (
        f'Bearer realm="{REALM}",service="{SERVICE}",scope="repository:a/b:pull,push"')
    with pytest.raises(RegistryError) as basic:
        await token_auth.authenticate(_request(_basic("u", "p")), [])
    assert basic.value.headers["WWW-Authenticate"] == f'Bearer realm="{REALM}",service="{SERVICE}"'
    token = issuer.issue("alice", GRANT_AB)
    assert await token_auth.authenticate(_request(f"Bearer {token}"), PUSH_AB) == "alice"
    pull_only = issuer.issue("bob", [{"type": "repository", "name": "a/b", "actions": ["pull"]}])
    assert await token_auth.authenticate(_request(f"Bearer {pull_only}"), []) == "bob"
    with pytest.raises(RegistryError) as scope:
        await token_auth.authenticate(_request(f"Bearer {pull_only}"), PUSH_AB)
    assert scope.value.status == 401
    assert scope.value.headers["WWW-Authenticate"].endswith('error="insufficient_scope"')
    with pytest.raises(RegistryError) as bad:
        await token_auth.authenticate(_request("Bearer not.a.jwt"), PUSH_AB)
    assert bad.value.headers["WWW-Authenticate"].endswith('error="invalid_token"')


def _self_signed_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token root")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> SigningKey:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    return SigningKey(key, cert)


def _x5c(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(Encoding.DER)).decode() for c in certs]


def test_token_verification(token_auth: TokenAuthenticator, issuer: TokenIssuer) -> None:
    verify = token_auth.verifier.verify
    assert verify(issuer.issue("a", GRANT_AB))["sub"] == "a"
    no_kid = issuer.issue("a", [], headers={"typ": "JWT"})
    assert verify(no_kid)["sub"] == "a"
    other = SigningKey.generate()
    refused = {
        "expired": issuer.issue("a", [], lifetime=-120),
        "audience": issuer.issue("a", [], audience="elsewhere"),
        "issuer": issuer.issue("a", [], issuer="someone else"),
        "other key": issuer.issue("a", [], signer=other, headers={"kid": other.kid}),
        "other key, our kid": issuer.issue("a", [], signer=other, headers={"kid": issuer.signer.kid}),
        "other key, no kid": issuer.issue("a", [], signer=other, headers={"typ": "JWT"}),
        "unknown kid": issuer.issue("a", [], headers={"kid": "AAAA:BBBB"}),
        "none": jwt.encode({"iss": ISSUER, "aud": SERVICE, "exp": 2**40}, None, algorithm="none"),
        "hmac": jwt.encode({"iss": ISSUER, "aud": SERVICE, "exp": 2**40}, "k" * 32, algorithm="HS256"),
        "no exp": jwt.encode({"iss": ISSUER, "aud": SERVICE}, issuer.signer.key, algorithm="ES256",
                             headers={"kid": issuer.signer.kid}),
        "self-signed x5c": issuer.issue("a", [], signer=other, headers={"x5c": _x5c(other.cert)}),
        "garbage x5c": issuer.issue("a", [], headers={"x5c": ["!!"]}),
    }
    for what, token in refused.items():
        with pytest.raises(InvalidToken):
            verify(token)
            pytest.fail(f"accepted: {what}")


def test_token_x5c_chain_to_bundle_root() -> None:
    ca_key, ca = _self_signed_ca()
    signer = _leaf(ca_key, ca)
    issuer = TokenIssuer(ISSUER, SERVICE, signer)
    auth = TokenAuthenticator(TokenConfig(REALM, SERVICE, ISSUER, "unused"), [ca])
    token = issuer.issue("a", [], headers={"x5c": _x5c(signer.cert)})
    assert auth.verifier.verify(token)["sub"] == "a"
    assert auth.verifier.verify(issuer.issue("a", [], headers={"x5c": _x5c(signer.cert, ca)}))["sub"] == "a"
    with pytest.raises(InvalidToken):  # signed by the leaf, named only by kid: the bundle has the root only
        auth.verifier.verify(issuer.issue("a", []))


# ---- config ----------------------------------------------------------------------------------

def test_proxy_auth_config() -> None:
    base = {"store": {"root": "/tmp/x"}, "origins": {"hosts": ["o:1"]}}
    assert build(ProxyConfig, base).auth is None
    cfg = build(ProxyConfig, {**base, "auth": {"htpasswd": {"realm": "r", "path": "/p", "failure_window": "2m"}}})
    assert cfg.auth == AuthConfig(htpasswd=HtpasswdConfig("r", "/p", failure_window=120.0))
    for bad in ({}, {"htpasswd": {"realm": "r", "path": "/p"}, "token": {"realm": "r", "service": "s",
                                                                      "issuer": "i", "rootcertbundle": "b"}}):
        with pytest.raises(ConfigError, match="exactly one of htpasswd, token"):
            build(ProxyConfig, {**base, "auth": bad})
    with pytest.raises(ConfigError, match="auth.token.issuer: required"):
        build(ProxyConfig, {**base, "auth": {"token": {"realm": "r", "service": "s", "rootcertbundle": "b"}}})


def test_missing_files_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        HtpasswdAuthenticator(HtpasswdConfig("r", str(tmp_path / "none")))
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(ConfigError, match="no bcrypt entries"):
        HtpasswdAuthenticator(HtpasswdConfig("r", str(tmp_path / "empty")))
    (tmp_path / "bundle").write_text("not pem")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        TokenAuthenticator(TokenConfig("r", "s", "i", str(tmp_path / "bundle")))


# ---- the registry app ------------------------------------------------------------------------

@pytest.fixture
async def registry(tmp_path: Path, htpasswd: HtpasswdAuthenticator) -> AsyncIterator[TestServer]:
    app = create_app("test")
    cas = CAStore(tmp_path / "cas")
    add_registry_routes(app, LocalStorage(tmp_path / "repo"), read_only=False, uploads=cas, auth=htpasswd)
    server = TestServer(app)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def test_every_registry_route_asks_the_authenticator(registry: TestServer) -> None:
    right = {"Authorization": _basic("alice", "right-pw")}
    async with aiohttp.ClientSession() as session:
        for method, path in [("GET", "/v2/"), ("GET", "/v2/_catalog"), ("GET", "/v2/a/b/tags/list"),
                             ("HEAD", "/v2/a/b/manifests/1"), ("PUT", "/v2/a/b/manifests/1"),
                             ("GET", "/v2/a/b/blobs/sha256:" + "0" * 64), ("POST", "/v2/a/b/blobs/uploads/"),
                             ("PATCH", "/v2/a/b/blobs/uploads/x"), ("GET", "/v2/a/b/referrers/sha256:" + "0" * 64)]:
            async with session.request(method, registry.make_url(path)) as r:
                assert r.status == 401, (method, path)
                assert r.headers["WWW-Authenticate"] == 'Basic realm="kraken"'
                assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
                if method != "HEAD":
                    assert json.loads(await r.read())["errors"][0]["code"] == "UNAUTHORIZED"
        async with session.get(registry.make_url("/v2/"), headers=right) as r:
            assert r.status == 200
        async with session.post(registry.make_url("/v2/a/b/blobs/uploads/"), headers=right) as r:
            assert r.status == 202
        async with session.get(registry.make_url("/health")) as r:
            assert r.status == 200


def test_proxy_auth_from_the_secrets_file(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("store: {root: /tmp/x}\norigins: {hosts: ['o:1']}\n")
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text("auth: {htpasswd: {realm: r, path: /etc/kraken/htpasswd}}\n")
    cfg = load_config(ProxyConfig, config, secrets=secrets)
    assert cfg.auth == AuthConfig(htpasswd=HtpasswdConfig("r", "/etc/kraken/htpasswd"))
    secrets.write_text("auth: {htpasswd: {realm: r, path: /p, max_failures: 0}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(ProxyConfig, config, secrets=secrets)
    assert "secrets.yaml" in str(e.value) and "<redacted>" in str(e.value)
