"""The SSL contexts of Kraken's ``tls:`` section, built in one place, and the check that
refuses a request without a client certificate.

Servers (:func:`server_context`): the component's certificate, and when the section has
``cas`` and the server checks its clients, a request for a client certificate. Servers ask
with ``CERT_OPTIONAL`` rather than ``CERT_REQUIRED``: a certificate that does not chain to
``cas`` still fails the handshake, but a client that sends none gets through to
:func:`client_cert_guard`, which answers 403 and logs who was refused. A refused handshake
is invisible (neither asyncio nor aiohttp logs it); a 403 names the peer and the path, and
lets routes that must stay open (the tracker's announces, which libtorrent cannot sign, and
``/health``) through.

Clients (:func:`client_context`): only ``cas`` are trusted (``create_default_context`` with
``cadata``: no system bundle, whatever ``SSL_CERT_FILE`` says, see
docs/SECURITY.md), the server's certificate is checked against ``tls.name`` through
``server_hostname`` (:class:`~kraken.http.client.HttpClient` passes it), and the client
certificate is presented when one is configured.

Passphrases are read from their files here and handed to OpenSSL; they are never logged.
"""
from __future__ import annotations

import ssl
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kraken.http.app import Handler
from kraken.http.config import SecretFile, TLSConfig, X509Pair
from kraken.http.errors import json_error
from kraken.log import get_logger

log = get_logger("kraken.http.tls")

#: Routes open without a client certificate on every server that checks them.
OPEN_ROUTES = ("/health",)


class ClientAuth(Enum):
    """What a server asks of its clients when its ``tls:`` section has CAs."""

    #: No client certificate asked (the registries Docker talks to).
    NONE = "none"
    #: Every route but the open ones needs a certificate signed by ``cas``.
    REQUIRED = "required"


def _cas_pem(config: TLSConfig) -> str:
    return "".join(Path(ca.path).read_text() for ca in config.cas)


def read_passphrase(file: SecretFile) -> bytes | None:
    """A key's passphrase from its file (``None`` when none is named), without the line end an
    editor adds; the one reading of passphrase files (``tls:`` pairs and ``p2p.tls``)."""
    if not file.path:
        return None
    return Path(file.path).read_bytes().rstrip(b"\r\n")


def signed_directly_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert`` itself (no chain): what libtorrent's SSL torrents
    accept of a peer, and what the dev PKI checks before it keeps a certificate."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _load_pair(ctx: ssl.SSLContext, pair: X509Pair) -> None:
    ctx.load_cert_chain(pair.cert.path, pair.key.path, password=read_passphrase(pair.passphrase))


def server_context(config: TLSConfig, clients: ClientAuth) -> ssl.SSLContext | None:
    """The context a server listens with; ``None`` when it serves plain HTTP."""
    if not config.serves:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(ctx, config.server)
    if clients is ClientAuth.REQUIRED and config.cas:
        ctx.load_verify_locations(cadata=_cas_pem(config))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(config: TLSConfig) -> ssl.SSLContext | None:
    """The context of every call to another Kraken component; ``None`` for plain HTTP."""
    if not config.calls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=_cas_pem(config))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.client.configured():
        _load_pair(ctx, config.client)
    return ctx


def checks_clients(config: TLSConfig, clients: ClientAuth) -> bool:
    return clients is ClientAuth.REQUIRED and config.verifies_clients


def client_cert_guard(component: str, open_routes: Iterable[str] = ()) -> Middleware:
    """A middleware answering 403 to a request that brought no verified client certificate,
    except on ``open_routes`` (exact paths, or prefixes ending in ``/``) and :data:`OPEN_ROUTES`."""
    exact = {*OPEN_ROUTES, *(r for r in open_routes if not r.endswith("/"))}
    prefixes = tuple(r for r in open_routes if r.endswith("/"))
    component_log = get_logger(component)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in exact or path.startswith(prefixes) or request.get_extra_info("peercert"):
            return await handler(request)
        component_log.warning("refused: no client certificate", method=request.method, path=path,
                              remote=request.remote)
        return json_error(403, "a client certificate signed by the cluster CA is required")

    return guard

