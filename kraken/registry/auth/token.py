"""Docker token authentication, as distribution's ``auth.token`` does.

A client without a valid token gets 401 with a ``Bearer`` challenge naming the token server
(``realm``), the ``service`` and the scope it needs; it fetches a JWT there and sends it as
``Authorization: Bearer``. A token is accepted when it is signed (RS256/384/512,
ES256/384/512) by a key of the ``rootcertbundle``: named by ``kid`` (libtrust's key ID, what
distribution's token servers send), or by an ``x5c`` chain that ends at a bundle certificate,
or (neither given) any bundle key; and when ``iss`` is ``issuer``, ``aud`` includes
``service``, ``exp``/``nbf`` hold (60 s leeway, like distribution), and its ``access`` claim
grants every action the request needs.
"""
from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kraken.config import ConfigError
from kraken.log import get_logger
from kraken.registry.auth.access import Access, quote_param, unauthorized
from kraken.registry.auth.config import TokenConfig

log = get_logger("kraken.registry.auth")

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
LEEWAY = 60.0
_MAX_CHAIN = 5

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class InvalidToken(Exception):
    """The token is malformed, badly signed, expired or not for this service."""


def libtrust_key_id(key: PublicKey) -> str:
    """The key ID libtrust (Docker's token servers) puts in ``kid``: the SHA-256 of the DER
    public key, first 240 bits, base32, in 12 groups of 4 joined by ``:``."""
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i:i + 4] for i in range(0, len(text), 4))


def load_bundle(path: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as e:
        raise ConfigError(f"auth.token.rootcertbundle: cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise ConfigError(f"auth.token.rootcertbundle: {path} holds no PEM certificate") from None
    for cert in certs:
        if not isinstance(cert.public_key(), (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise ConfigError(f"auth.token.rootcertbundle: {path}: only RSA and EC keys are supported")
    return certs


def granted(claims: Mapping[str, Any], wanted: Access) -> bool:
    """Whether the token's ``access`` claim allows every action of ``wanted``."""
    allowed: set[str] = set()
    for entry in claims.get("access") or []:
        if not isinstance(entry, dict):
            continue
        if entry.get("type") == wanted.type and entry.get("name") == wanted.name:
            actions = entry.get("actions") or []
            if isinstance(actions, list):
                allowed.update(a for a in actions if isinstance(a, str))
    return "*" in allowed or all(a in allowed for a in wanted.actions)


class TokenVerifier:
    """Checks a JWT's signature and registered claims against the bundle and the config."""

    def __init__(self, config: TokenConfig, certs: list[x509.Certificate]) -> None:
        self.service = config.service
        self.issuer = config.issuer
        self.roots = certs
        self.keys: dict[str, PublicKey] = {}
        for cert in certs:
            key = cert.public_key()
            assert isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))
            self.keys[libtrust_key_id(key)] = key

    def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken(f"malformed: {e}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidToken(f"algorithm {str(alg)[:20]!r} not accepted")
        for key in self._candidate_keys(header):
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key, algorithms=[alg], audience=self.service, issuer=self.issuer,
                    leeway=LEEWAY, options={"require": ["exp", "iss", "aud"]},
                )
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue
            except jwt.PyJWTError as e:
                raise InvalidToken(str(e)) from None
            return claims
        raise InvalidToken("signature not verified by any trusted key")

    def _candidate_keys(self, header: Mapping[str, Any]) -> list[PublicKey]:
        if "x5c" in header:
            return [self._chain_key(header["x5c"])]
        kid = header.get("kid")
        if kid is not None:
            key = self.keys.get(str(kid))
            if key is None:
                raise InvalidToken("unknown kid")
            return [key]
        return list(self.keys.values())

    def _chain_key(self, x5c: Any) -> PublicKey:
        """The leaf key of an ``x5c`` chain that ends at (or is issued by) a bundle certificate."""
        if not isinstance(x5c, list) or not 0 < len(x5c) <= _MAX_CHAIN:
            raise InvalidToken("x5c: expected a list of certificates")
        try:
            chain = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
        except (TypeError, ValueError, binascii.Error):
            raise InvalidToken("x5c: not a certificate") from None
        now = datetime.datetime.now(datetime.UTC)
        for cert in chain:
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise InvalidToken("x5c: certificate not valid now")
        try:
            for child, parent in zip(chain, chain[1:], strict=False):
                child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise InvalidToken("x5c: broken chain") from None
        if not self._anchored(chain[-1]):
            raise InvalidToken("x5c: chain does not end at a trusted certificate")
        key = chain[0].public_key()
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise InvalidToken("x5c: unsupported key type")
        return key

    def _anchored(self, top: x509.Certificate) -> bool:
        for root in self.roots:
            if top == root:
                return True
            try:
                top.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False


class TokenAuthenticator:
    """Every request must carry a valid token granting what it needs (401 otherwise)."""

    def __init__(self, config: TokenConfig, certs: list[x509.Certificate] | None = None) -> None:
        self.realm = config.realm
        self.service = config.service
        self.verifier = TokenVerifier(config, certs if certs is not None else load_bundle(config.rootcertbundle))
        log.info("registry auth: token", realm=self.realm, service=self.service, issuer=config.issuer,
                 keys=len(self.verifier.keys))

    def challenge(self, access: list[Access], error: str | None = None) -> str:
        params = [f"realm={quote_param(self.realm)}", f"service={quote_param(self.service)}"]
        if access:
            params.append(f"scope={quote_param(' '.join(a.scope for a in access))}")
        if error:
            params.append(f"error={quote_param(error)}")
        return "Bearer " + ",".join(params)

    async def authenticate(self, request: web.Request, access: list[Access]) -> str:
        """The token's subject, or a 401 with the challenge that says what to fetch."""
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized(self.challenge(access))
        try:
            claims = self.verifier.verify(token.strip())
        except InvalidToken as e:
            log.warning("registry auth: token refused", client=request.remote, reason=str(e)[:200])
            raise unauthorized(self.challenge(access, "invalid_token"), "invalid token") from None
        missing = [a for a in access if not granted(claims, a)]
        if missing:
            raise unauthorized(self.challenge(access, "insufficient_scope"), "insufficient scope",
                               [{"Type": a.type, "Name": a.name, "Action": ",".join(a.actions)} for a in missing])
        return str(claims.get("sub", ""))
