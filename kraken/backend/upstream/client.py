"""Requests to one upstream registry's v2 API, authenticated, with errors in backend terms.

Shared by ``registry_blob`` and ``registry_tag``. Every failure leaves here as a
:class:`~kraken.backend.base.BackendError` that names the backend kind, the upstream's
address and the namespace, so an origin's or build-index's 503 says which pull-through broke
and why (credentials refused, rate limited, unreachable).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from yarl import URL

from kraken.backend.base import BackendContext, BackendError, BackendNotFound, InvalidName
from kraken.backend.upstream.auth import AuthFailed, RegistryAuth
from kraken.backend.upstream.config import RegistryBackendConfig
from kraken.config import ConfigError
from kraken.http.client import HTTPStatusError, create_client
from kraken.http.urls import base_url
from kraken.registry.manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST

#: Every manifest type Kraken serves, so the upstream never falls back to schema 1 or
#: picks one platform of a multi-platform image for us.
MANIFEST_ACCEPT = ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX])


def basic_credentials(config: RegistryBackendConfig, context: BackendContext) -> tuple[str, str] | None:
    """``security.basic``'s username and password; the password, when the config has none,
    from the ``auth:`` section's set named after the username."""
    basic = config.security.basic
    if basic is None or not basic.username:
        return None
    password = basic.password or context.credentials.get(basic.username, {}).get("password")
    if password is None:
        raise ConfigError(f"address {config.address}: security.basic.username {basic.username!r} has no password "
                          "(security.basic.password, or auth.<kind>.<username>.password)")
    return basic.username, password.reveal()


class RegistryUpstream:
    """HTTP to one upstream registry (one per backend; ``close()`` it)."""

    def __init__(self, kind: str, config: RegistryBackendConfig, context: BackendContext) -> None:
        self.name = f"{kind} {config.address}"
        credentials = basic_credentials(config, context)
        secure = not config.security.tls.client.disabled
        self.base = base_url(config.address, secure=secure)
        self._origin = URL(self.base).origin()
        self.http = create_client(context.http_client, config.security.tls.as_tls())
        #: Whole-request limit (HEAD, manifests, tokens).
        self.short = aiohttp.ClientTimeout(total=config.timeout)
        #: A blob body may take long, but not stall.
        self.long = aiohttp.ClientTimeout(total=None, sock_connect=config.timeout, sock_read=config.timeout)
        self.auth = RegistryAuth(self.http, credentials, self.short, secure=secure)

    async def send(self, method: str, repo: str, path: str, *, ok: tuple[int, ...],
                   headers: dict[str, str] | None = None, long: bool = False) -> aiohttp.ClientResponse:
        """``method /v2/<path>`` with the credentials the upstream asks for (scope: pull of
        ``repo``); the response (caller releases it) has a status in ``ok``."""
        url = f"{self.base}/v2/{path}"
        scope = f"repository:{repo}:pull"
        for _ in range(2):
            sent = await self.auth.headers(scope)
            resp = await self.http.request(method, url, ok=(*ok, 401), headers={**(headers or {}), **sent},
                                           timeout=self.long if long else self.short)
            if resp.status != 401:
                return resp
            challenge = resp.headers.getall("WWW-Authenticate", [])
            answered_by = resp.url.origin()
            resp.release()
            if answered_by != self._origin:
                # A redirect (a CDN) asks for credentials: its realm is not the upstream's
                # word, and following it would hand the upstream's credentials to that host.
                raise AuthFailed(f"{answered_by} (a redirect of the upstream) asked for authentication; "
                                 "the upstream's credentials are sent only to the upstream and its token server")
            self.auth.challenged(challenge, scope, sent)
        raise AuthFailed("the registry asked for authentication again after it was given")

    async def ping(self) -> None:
        """``GET /v2/``: the upstream answers as a v2 registry (200, or 401 before auth)."""
        async with await self.http.request("GET", f"{self.base}/v2/", ok=(200, 401), timeout=self.short):
            pass

    @contextmanager
    def errors(self, op: str, namespace: str, name: str) -> Iterator[None]:
        """Turn a failure of ``op`` into a BackendError naming backend, upstream and namespace."""
        where = f"{self.name}: namespace {namespace!r}: {op} {name}"
        try:
            yield
        except (BackendError, BackendNotFound, InvalidName):
            raise
        except AuthFailed as e:
            raise BackendError(f"{where}: authentication failed: {e}") from None
        except HTTPStatusError as e:
            hint = " (rate limited by the upstream)" if e.status == 429 else ""
            raise BackendError(f"{where}: HTTP {e.status}{hint}: {e.message[:300]}") from None
        except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError) as e:
            raise BackendError(f"{where}: {type(e).__name__}: {e}") from None

    async def close(self) -> None:
        await self.http.close()
