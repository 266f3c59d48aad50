"""The pull-through backends against Debian's distribution registry: anonymous, with
htpasswd (Basic) and with token auth (a Bearer token server), plus a small fake upstream
(named as such) for the one thing a real registry never does: serve corrupt bytes."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kraken.backend import BackendConfig, BackendError, BackendNotFound, InvalidName, ReadOnlyBackend, create_backend
from kraken.backend.upstream import CorruptUpstreamBlob, RegistryBackendConfig
from kraken.config import ConfigError, Secret, build
from kraken.core.digest import Digest
from tests.support.readonly_suite import ReadOnlySuite
from tests.support.registry_http import fetch_manifest, push_blob_bytes, push_manifest
from tests.support.upstream import Mode, Upstream, start_upstream

pytestmark = pytest.mark.skipif(shutil.which("docker-registry") is None, reason="docker-registry not installed")


@pytest.fixture(scope="module", params=["anonymous", "htpasswd", "token"])
def upstream(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    mode: Mode = request.param
    with start_upstream(tmp_path_factory.mktemp(f"upstream-{mode}"), mode) as up:
        yield up


def _config(kind: str, section: dict[str, Any]) -> BackendConfig:
    return BackendConfig(kind, build(RegistryBackendConfig, section))


class TestRegistryBlobBackend(ReadOnlySuite):
    @pytest.fixture
    def backend_config(self, upstream: Upstream) -> Callable[[], BackendConfig]:
        return lambda: _config("registry_blob", upstream.backend_section())

    @pytest.fixture
    def seed(self, upstream: Upstream) -> Callable[[str, bytes], str]:
        return lambda namespace, data: push_blob_bytes(upstream.seeder.url, namespace, data).hex


def _image(upstream: Upstream, repo: str, tag: str) -> tuple[Digest, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = os.urandom(2048)
    config_digest = push_blob_bytes(upstream.seeder.url, repo, config)
    layer_digest = push_blob_bytes(upstream.seeder.url, repo, layer)
    digest = push_manifest(upstream.seeder.url, repo, tag, config_digest, len(config), layer_digest, len(layer))
    body, _, _ = fetch_manifest(upstream.seeder.host, repo, tag)
    return digest, body


async def test_tags_and_manifests(upstream: Upstream) -> None:
    """registry_tag resolves repo:tag to the manifest digest (as build-index stores tags), and
    registry_blob serves that manifest by digest (the registry only has it under manifests/)."""
    digest, body = _image(upstream, "lib/app", "v1")
    tags = create_backend(_config("registry_tag", upstream.backend_section()))
    blobs = create_backend(_config("registry_blob", upstream.backend_section()))
    try:
        assert await tags.download_bytes("lib/app", "lib/app:v1") == str(digest).encode()
        info = await tags.stat("lib/app", "lib/app:v1")
        assert info is not None and info.size == len(body)
        assert await tags.stat("lib/app", "lib/app:nope") is None
        with pytest.raises(BackendNotFound):
            await tags.download_bytes("lib/app", "lib/app:nope")
        assert await tags.list("lib/app:") == ["lib/app:v1"]
        assert await tags.list("") == []
        # build-index's readiness probe: not a tag, checks the upstream answers.
        assert await tags.stat("kraken-readiness", "kraken-readiness:.probe") is None
        with pytest.raises(InvalidName):
            await tags.download_bytes("x", "no-tag")
        with pytest.raises(ReadOnlyBackend):
            await tags.upload_bytes("lib/app", "lib/app:v2", str(digest).encode())
        assert await blobs.download_bytes("lib/app", digest.hex) == body
        manifest = await blobs.stat("lib/app", digest.hex)
        assert manifest is not None and manifest.size == len(body)
    finally:
        await tags.close()
        await blobs.close()


async def test_wrong_credentials_name_backend_and_namespace(upstream: Upstream) -> None:
    if upstream.mode == "anonymous":
        pytest.skip("an anonymous upstream asks for no credentials")
    digest = push_blob_bytes(upstream.seeder.url, "lib/secret", b"guarded")
    backend = create_backend(_config("registry_blob", upstream.backend_section(password="wrong")))
    try:
        with pytest.raises(BackendError) as refused:
            await backend.stat("lib/secret", digest.hex)
        message = str(refused.value)
        assert f"registry_blob {upstream.addr}" in message and "namespace 'lib/secret'" in message
        assert "authentication failed" in message and "'puller'" in message
    finally:
        await backend.close()
    anonymous = dict(upstream.backend_section())
    anonymous["security"] = {"tls": {"client": {"disabled": True}}}
    backend = create_backend(_config("registry_blob", anonymous))
    try:
        with pytest.raises(BackendError, match="authentication failed"):
            await backend.stat("lib/secret", digest.hex)
    finally:
        await backend.close()


async def test_one_token_per_repository(upstream: Upstream) -> None:
    if upstream.tokens is None:
        pytest.skip("token auth only")
    digests = [push_blob_bytes(upstream.seeder.url, "lib/many", os.urandom(100)) for _ in range(5)]
    before = len(upstream.tokens.requests)
    backend = create_backend(_config("registry_blob", upstream.backend_section()))
    try:
        for d in digests:
            assert await backend.stat("lib/many", d.hex) is not None
            assert await backend.download_bytes("lib/many", d.hex)
        asked = upstream.tokens.requests[before:]
        assert [r["scope"] for r in asked] == ["repository:lib/many:pull"]
        assert asked[0]["service"] == "upstream-registry"
    finally:
        await backend.close()


async def test_password_from_the_auth_section() -> None:
    """``security.basic.username`` without a password: the password comes from ``auth:``
    (the --secrets file); with neither, the backend is not built."""
    section = {"address": "registry.example.com", "security": {"basic": {"username": "alice"}}}
    config = BackendConfig("registry_blob", build(RegistryBackendConfig, section))
    with pytest.raises(ConfigError, match="'alice' has no password"):
        create_backend(config)
    backend = create_backend(config, auth={"registry_blob": {"alice": {"password": Secret("from-secrets")}}})
    await backend.close()
    assert config.config.timeout == 60  # Kraken's default


class FakeCorruptUpstream:
    """A fake upstream (not a registry): answers every blob with bytes that are not the
    digest's, the one behaviour a real registry cannot be made to show."""

    async def blob(self, request: web.Request) -> web.Response:
        return web.Response(body=b"not the bytes you asked for" * 1000)


@pytest.fixture
async def corrupt_upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/v2/{repo:.+}/blobs/{digest}", FakeCorruptUpstream().blob)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"127.0.0.1:{server.port}"
    await server.close()


async def test_corrupt_blob_is_refused(corrupt_upstream: str, tmp_path: Path) -> None:
    section = {"address": corrupt_upstream, "security": {"tls": {"client": {"disabled": True}}}}
    backend = create_backend(_config("registry_blob", section))
    digest = Digest.of_bytes(b"the real blob")
    try:
        with pytest.raises(CorruptUpstreamBlob, match=f"namespace 'lib/x'.*for {digest}; refused"):
            await backend.download("lib/x", digest.hex, tmp_path / "out")
        with pytest.raises(CorruptUpstreamBlob):
            await backend.download_bytes("lib/x", digest.hex)
        assert list(tmp_path.iterdir()) == []
    finally:
        await backend.close()


class FakeRedirectingUpstream:
    """A fake upstream (not a registry) whose blob GETs redirect to a second server (as Docker
    Hub's do, to its CDN), and that second server answering 401 with a Bearer realm of its
    own: a host the upstream sent us to must never receive our credentials."""

    def __init__(self) -> None:
        self.token_requests: list[str | None] = []
        self.elsewhere = ""

    async def blob(self, request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{self.elsewhere}/cdn/blob")

    async def cdn(self, request: web.Request) -> web.Response:
        realm = f'Bearer realm="{self.elsewhere}/token",service="cdn"'
        return web.Response(status=401, headers={"WWW-Authenticate": realm})

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append(request.headers.get("Authorization"))
        return web.json_response({"token": "stolen"})


async def test_a_401_after_a_redirect_gets_no_credentials(tmp_path: Path) -> None:
    fake = FakeRedirectingUpstream()
    upstream_app, elsewhere_app = web.Application(), web.Application()
    upstream_app.router.add_get("/v2/{repo:.+}/blobs/{digest}", fake.blob)
    elsewhere_app.router.add_get("/cdn/blob", fake.cdn)
    elsewhere_app.router.add_get("/token", fake.token)
    upstream, elsewhere = TestServer(upstream_app, host="127.0.0.1"), TestServer(elsewhere_app, host="127.0.0.1")
    await upstream.start_server()
    await elsewhere.start_server()
    fake.elsewhere = "http" + f"://127.0.0.1:{elsewhere.port}"
    section = {"address": f"127.0.0.1:{upstream.port}",
               "security": {"tls": {"client": {"disabled": True}}, "basic": {"username": "u", "password": "pw"}}}
    backend = create_backend(_config("registry_blob", section))
    try:
        with pytest.raises(BackendError, match="redirect"):
            await backend.download("lib/x", Digest.of_bytes(b"x").hex, tmp_path / "out")
        assert fake.token_requests == []
    finally:
        await backend.close()
        await upstream.close()
        await elsewhere.close()


@pytest.fixture
async def bloated_tokens() -> AsyncIterator[str]:
    """A fake upstream (not a registry) whose token server answers with a 17 MiB token."""
    app = web.Application()
    base = ""

    async def challenge(request: web.Request) -> web.Response:
        return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="{base}/token"'})

    async def token(request: web.Request) -> web.Response:
        return web.Response(body=b'{"token": "' + b"a" * (17 << 20) + b'"}', content_type="application/json")

    app.router.add_route("*", "/v2/{rest:.*}", challenge)
    app.router.add_get("/token", token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = "http" + f"://127.0.0.1:{server.port}"
    yield f"127.0.0.1:{server.port}"
    await server.close()


async def test_an_oversized_token_answer_is_refused(bloated_tokens: str) -> None:
    section = {"address": bloated_tokens, "security": {"tls": {"client": {"disabled": True}}}}
    backend = create_backend(_config("registry_blob", section))
    try:
        with pytest.raises(BackendError, match="larger than"):
            await backend.stat("lib/x", Digest.of_bytes(b"x").hex)
    finally:
        await backend.close()
