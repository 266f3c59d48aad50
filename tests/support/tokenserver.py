"""A small Docker token server for tests: a signing key with its certificate (the proxy's
``rootcertbundle``), a :class:`TokenIssuer` that makes JWTs as distribution's token servers
do, and :class:`TokenServer`, the token protocol over HTTP in a background thread
(``GET /token?service=..&scope=..`` with Basic credentials -> ``{"token": ...}``).
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from kraken.registry.auth.token import libtrust_key_id


def write_htpasswd(path: Path, users: Mapping[str, str], rounds: int = 5) -> Path:
    """An htpasswd file as ``htpasswd -B`` writes it (``$2y$``, cost 5 by default)."""
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
        lines.append(f"{user}:{hashed.replace('$2b$', '$2y$', 1)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class SigningKey:
    """An EC P-256 key and a self-signed certificate for it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def generate(cls, name: str = "test token signer", valid_days: int = 2) -> SigningKey:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=valid_days))
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)

    @property
    def kid(self) -> str:
        return libtrust_key_id(self.key.public_key())


@dataclass
class TokenIssuer:
    issuer: str
    service: str
    signer: SigningKey

    def issue(self, subject: str, access: list[dict[str, Any]], *, lifetime: float = 300,
              audience: str | None = None, issuer: str | None = None, headers: dict[str, Any] | None = None,
              signer: SigningKey | None = None) -> str:
        """A JWT for ``access`` (``[{"type", "name", "actions"}]``); the keyword arguments make
        wrong ones (expired, other audience or issuer, other key, x5c instead of kid)."""
        now = int(time.time())
        claims = {"iss": issuer or self.issuer, "sub": subject, "aud": audience or self.service,
                  "exp": now + int(lifetime), "nbf": now - 1, "iat": now,
                  "jti": base64.urlsafe_b64encode(os.urandom(12)).decode(), "access": access}
        key = signer or self.signer
        return jwt.encode(claims, key.key, algorithm="ES256", headers=headers or {"kid": key.kid})


@dataclass
class TokenUser:
    password: str
    # repository name -> actions this user may get; "*" as a name: every repository.
    grants: dict[str, list[str]] = field(default_factory=dict)


def parse_scope(scope: str) -> list[tuple[str, str, list[str]]]:
    """``repository:a/b:pull,push repository:c:pull`` -> [(type, name, actions)]."""
    out = []
    for item in scope.split():
        kind, _, rest = item.partition(":")
        name, _, actions = rest.rpartition(":")
        out.append((kind, name, [a for a in actions.split(",") if a]))
    return out


class TokenServer:
    """The Docker token protocol on 127.0.0.1, run in a thread with its own event loop."""

    def __init__(self, issuer: TokenIssuer, users: Mapping[str, TokenUser]) -> None:
        self.issuer = issuer
        self.users = dict(users)
        self.requests: list[dict[str, str]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        user = self._user(request.headers.get("Authorization", ""))
        if user is None:
            return web.json_response({"details": "invalid credentials"}, status=401,
                                     headers={"WWW-Authenticate": 'Basic realm="token"'})
        name, account = user
        access = []
        for kind, repo, actions in parse_scope(" ".join(request.query.getall("scope", []))):
            allowed = account.grants.get(repo, account.grants.get("*", [])) if kind == "repository" else []
            given = [a for a in actions if a in allowed]
            if given:
                access.append({"type": kind, "name": repo, "actions": given})
        token = self.issuer.issue(name, access)
        return web.json_response({"token": token, "access_token": token, "expires_in": 300})

    def _user(self, header: str) -> tuple[str, TokenUser] | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        name, _, password = base64.b64decode(value).decode().partition(":")
        account = self.users.get(name)
        return (name, account) if account is not None and account.password == password else None

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def start(self) -> TokenServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
