"""Pull-through: an agent serves an image that was only ever pushed to an upstream registry.

For each upstream (Debian's distribution: anonymous, with htpasswd, with a Bearer token
server), a herd whose build-index resolves tags with ``registry_tag`` and whose origin fetches
blobs with ``registry_blob`` from that upstream, and one agent. The image is pushed to the
upstream with skopeo; skopeo then pulls ``<agent>/library/app:v1`` and must get the image
byte for byte, the agent's layers coming over P2P. A second namespace routed to the same
upstream with a wrong password fails fast with an OCI error naming the backend and the
namespace. With the anonymous upstream, a third namespace goes to a fake upstream (not a
registry) that serves a layer whose bytes are not its digest's: the pull fails and the
origin never caches that layer.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kraken.devcluster import Process
from tests.support.cluster import Herd, start_herd
from tests.support.docker import Dockerd
from tests.support.metrics import metric
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.process import ClientError
from tests.support.registry_http import MANIFEST_ACCEPT, http_request
from tests.support.skopeo import assert_dir_matches_image, skopeo_copy, skopeo_pull_dir
from tests.support.upstream import Mode, Upstream, start_upstream

MiB = 1024 * 1024
pytestmark = pytest.mark.realclients


class FakeCorruptRegistry:
    """A fake upstream (not a registry), in a thread: serves ``image`` under ``corrupt/app:v1``
    but every layer with wrong bytes of the right length."""

    def __init__(self, image: GeneratedImage) -> None:
        self.image = image
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _manifest(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        if ref not in ("v1", self.image.manifest_digest):
            return web.Response(status=404)
        return web.Response(body=self.image.manifest, content_type="application/vnd.oci.image.manifest.v1+json")

    async def _blob(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        if digest == self.image.config_digest:
            return web.Response(body=self.image.config)
        if digest in self.image.layer_digests:
            size = self.image.layer_sizes[self.image.layer_digests.index(digest)]
            return web.Response(body=b"\0" * size)
        return web.Response(status=404)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v2/", self._ping)
        app.router.add_get("/v2/corrupt/app/manifests/{ref}", self._manifest)
        app.router.add_get("/v2/corrupt/app/blobs/{digest}", self._blob)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def __enter__(self) -> FakeCorruptRegistry:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


def _route(namespace: str, kind: str, section: dict[str, Any]) -> dict[str, Any]:
    return {"namespace": namespace, "backend": {kind: section}}


def _backends(kind: str, upstream: Upstream, corrupt_addr: str | None) -> list[dict[str, Any]]:
    routes = [_route("denied/.*", kind, upstream.backend_section(password="wrong-password"))]
    if corrupt_addr is not None:
        routes.append(_route("corrupt/.*", kind, {"address": corrupt_addr,
                                                  "security": {"tls": {"client": {"disabled": True}}}}))
    return [*routes, _route(".*", kind, upstream.backend_section())]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    return generate_oci_layout(tmp_path_factory.mktemp("oci"), "v1", [1 * MiB, 512 * 1024], seed=20261212)


@pytest.fixture(scope="module")
def corrupt_image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    """Blobs of their own: the origin's cache is by digest, so a layer it got from the real
    upstream would be served whatever the fake says."""
    return generate_oci_layout(tmp_path_factory.mktemp("oci"), "v1", [256 * 1024], seed=20261213)


@pytest.fixture(scope="module", params=["anonymous", "htpasswd", "token"])
def pullthrough(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, image: GeneratedImage,
                corrupt_image: GeneratedImage) -> Iterator[tuple[Herd, Upstream, FakeCorruptRegistry | None]]:
    mode: Mode = request.param
    workdir = tmp_path_factory.mktemp(f"pullthrough-{mode}")
    with start_upstream(workdir / "upstream", mode) as upstream, FakeCorruptRegistry(corrupt_image) as fake:
        for repo in ("library/app", "denied/app"):
            skopeo_copy(image.oci_ref, f"docker://{upstream.seeder.host}/{repo}:v1")
        corrupt = f"127.0.0.1:{fake.port}" if mode == "anonymous" else None
        herd = start_herd(workdir / "herd", agents=1, overrides={
            "origin": {"backends": _backends("registry_blob", upstream, corrupt),
                       "metainfo": {"piece_lengths": {0: "256KB"}}},
            "build-index": {"backends": _backends("registry_tag", upstream, corrupt)},
        })
        try:
            yield herd, upstream, fake if corrupt else None
        finally:
            herd.stop()


def _p2p_bytes(agent: Process) -> float:
    r = http_request(f"http://127.0.0.1:{agent.health_port}/metrics")
    text = r.body.decode()
    return sum(metric(text, "kraken_p2p_download_bytes_total", 0.0, source=s) for s in ("origin", "peer"))


def test_pull_through_agent(pullthrough: tuple[Herd, Upstream, FakeCorruptRegistry | None],
                            image: GeneratedImage, tmp_path: Path) -> None:
    herd, _, _ = pullthrough
    agent = herd.agents[0]
    before = _p2p_bytes(agent)
    out = skopeo_pull_dir(f"docker://{agent.addr}/library/app:v1", tmp_path / "pulled")
    assert_dir_matches_image(out, image)
    assert _p2p_bytes(agent) - before >= sum(image.layer_sizes)


def test_docker_pull_through_agent(dockerd: Dockerd, pullthrough: tuple[Herd, Upstream, FakeCorruptRegistry | None],
                                  image: GeneratedImage) -> None:
    """The issue's words: ``docker pull <agent>/library/<image>:<tag>``."""
    herd, upstream, _ = pullthrough
    if upstream.mode != "anonymous":
        pytest.skip("one upstream is enough for dockerd")
    ref = f"{herd.agents[0].addr}/library/app:v1"
    dockerd.pull(ref)
    try:
        assert dockerd.image_id(ref) == image.config_digest
    finally:
        dockerd.rmi(ref)


def test_docker_hub_names_pull_through_the_agent_as_registry_mirror(
        pullthrough: tuple[Herd, Upstream, FakeCorruptRegistry | None], image: GeneratedImage) -> None:
    """The documented setup: dockerd's ``registry-mirrors`` is the agent, and ``docker pull
    app:v1`` (Docker Hub's ``library/app``) is served from the upstream, which only the herd
    reaches."""
    herd, upstream, _ = pullthrough
    if upstream.mode != "token":
        pytest.skip("the Bearer flow is Docker Hub's; one upstream is enough for dockerd")
    agent = herd.agents[0]
    mirrored = Dockerd(registry_mirrors=[agent.url])
    try:
        mirrored.start()
        mirrored.pull("app:v1")
        assert mirrored.image_id("app:v1") == image.config_digest
    finally:
        mirrored.stop()
    log = agent.log_path.read_text(errors="replace")
    assert "path=/v2/library/app/manifests/v1 status=200" in log, log[-3000:]


def test_wrong_credentials_are_a_clear_error(pullthrough: tuple[Herd, Upstream, FakeCorruptRegistry | None]) -> None:
    herd, upstream, _ = pullthrough
    if upstream.mode == "anonymous":
        pytest.skip("an anonymous upstream asks for no credentials")
    agent = herd.agents[0]
    r = http_request(f"{agent.url}/v2/denied/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT}, timeout=60)
    assert r.status == 503, r
    error = json.loads(r.body)["errors"][0]
    text = f"{error['message']} {error['detail']}"
    assert f"registry_tag {upstream.addr}: namespace 'denied/app'" in text, text
    assert "authentication failed" in text and "'puller'" in text, text


def test_push_to_a_pulled_through_namespace_is_refused(
        pullthrough: tuple[Herd, Upstream, FakeCorruptRegistry | None], image: GeneratedImage) -> None:
    herd, upstream, _ = pullthrough
    if upstream.mode != "anonymous":
        pytest.skip("one herd is enough")
    with pytest.raises(ClientError) as refused:
        skopeo_copy(image.oci_ref, f"docker://{herd.proxy.addr}/library/pushed:v1")
    assert "read-only" in str(refused.value), refused.value


def test_corrupt_upstream_blob_is_never_cached(pullthrough: tuple[Herd, Upstream, FakeCorruptRegistry | None],
                                               corrupt_image: GeneratedImage, tmp_path: Path) -> None:
    herd, _, fake = pullthrough
    if fake is None:
        pytest.skip("one herd is enough")
    agent = herd.agents[0]
    with pytest.raises(ClientError):
        skopeo_pull_dir(f"docker://{agent.addr}/corrupt/app:v1", tmp_path / "pulled")
    cached = {p.name for p in (herd.workdir / "origin").rglob("*") if p.is_file()}
    for digest in corrupt_image.layer_digests:
        assert digest.split(":")[1] not in cached
    assert corrupt_image.manifest_digest.split(":")[1] in cached  # what verifies was pulled through
