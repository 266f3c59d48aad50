"""The gcs backend against a real fake-gcs-server: the conformance suite, chunked uploads,
paginated listing, credentials (Kraken's ``auth:`` shape, a token server), failures, and an
event loop that stays responsive while hundreds of MiB move."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer

from kraken.backend import Backend, BackendConfig, BackendContext, BackendError, create_backend
from kraken.backend.base import MAX_IN_MEMORY
from kraken.backend.config import AuthConfig, NamespaceBackendConfig, kind_credentials
from kraken.backend.gcs import GcsBackend, GcsBackendConfig
from kraken.buildindex.config import BuildIndexConfig
from kraken.config import ConfigError, Secret, build, load_config
from kraken.devcluster import free_port
from kraken.origin.config import OriginConfig
from tests.support.backend_suite import BackendSuite, ConfigFactory, sha256_file, write_random_file
from tests.support.gcs import FakeGcs, fake_gcs_server, service_account_json
from tests.support.stall import pool_threads, stalled_file
from tests.support.waiting import until

MiB = 1 << 20
#: The size moved while the loop's lag is measured; KRAKEN_GCS_LAG_MB=1024 for the 1 GiB figure.
LAG_SIZE = int(os.environ.get("KRAKEN_GCS_LAG_MB", "256")) * MiB


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    with fake_gcs_server(tmp_path_factory.mktemp("fake-gcs")) as server:
        yield server


@pytest.fixture
def bucket(gcs: FakeGcs) -> str:
    """A fresh bucket per test, so tests never see each other's objects."""
    return gcs.create_bucket(f"b-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    """Backends a test builds, closed after it."""
    made: list[Backend] = []
    yield made
    for backend in made:
        await backend.close()


def gcs_backend(made: list[Backend], config: BackendConfig, **context: Any) -> GcsBackend:
    backend = create_backend(config, **context)
    made.append(backend)
    assert isinstance(backend, GcsBackend)
    return backend


@dataclass
class Requests:
    """Every HTTP request a backend's session made: (method, url, Authorization header)."""

    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        request = response.request
        self.seen.append((str(request.method), str(request.url), str(request.headers.get("Authorization", ""))))

    def count(self, method: str, part: str) -> int:
        return sum(1 for m, url, _ in self.seen if m == method and part in url)


def record(backend: GcsBackend) -> Requests:
    recorded = Requests()
    backend.session.hooks["response"].append(recorded.hook)
    return recorded


class TestGcsBackend(BackendSuite):
    @pytest.fixture
    def backend_config(self, gcs: FakeGcs, bucket: str) -> ConfigFactory:
        def make(root: str, name_path: str) -> BackendConfig:
            # 2 MiB chunks: the suite's 24 MiB file goes up in 12 of them, at most one in memory.
            return gcs.backend_config(bucket, root, name_path, upload_chunk_size=2 * MiB)

        return make


# ---- uploads, downloads, listing ---------------------------------------------------------------


async def test_large_upload_goes_in_chunks_byte_for_byte(
    gcs: FakeGcs, bucket: str, backends: list[Backend], tmp_path: Path
) -> None:
    backend = gcs_backend(backends, gcs.backend_config(bucket, "root", upload_chunk_size=MiB))
    requests_made = record(backend)
    src = tmp_path / "src"
    expected = write_random_file(src, 10 * MiB + 12345)
    await backend.upload("ns", "big", src)
    # One resumable session (POST), then one PUT per 1 MiB chunk: 10 whole and a last short one.
    assert requests_made.count("POST", "uploadType=resumable") == 1
    assert requests_made.count("PUT", "upload_id=") == 11
    assert gcs.objects(bucket) == {"root/big": 10 * MiB + 12345}
    (tmp_path / "raw").write_bytes(gcs.read(bucket, "root/big"))
    assert sha256_file(tmp_path / "raw") == expected
    await backend.download("ns", "big", tmp_path / "dst")
    assert sha256_file(tmp_path / "dst") == expected


async def test_listing_reads_every_page(gcs: FakeGcs, bucket: str, backends: list[Backend]) -> None:
    backend = gcs_backend(backends, gcs.backend_config(bucket, "r", list_max_keys=3))
    names = [f"dir/{i:02d}" for i in range(10)]
    await asyncio.gather(*(backend.upload_bytes("ns", n, n.encode()) for n in names))
    requests_made = record(backend)
    assert await backend.list("dir/") == names
    assert requests_made.count("GET", "maxResults=3") == 4  # 3 + 3 + 3 + 1


async def test_download_bytes_refuses_an_object_too_large_for_memory(
    gcs: FakeGcs, bucket: str, backends: list[Backend], tmp_path: Path
) -> None:
    """``download_bytes`` (tags, manifests) reads at most MAX_IN_MEMORY bytes: a larger object
    is an error, not a 17 MiB allocation."""
    backend = gcs_backend(backends, gcs.backend_config(bucket))
    src = tmp_path / "src"
    write_random_file(src, MAX_IN_MEMORY + 1)
    await backend.upload("ns", "huge", src)
    with pytest.raises(BackendError, match="larger than"):
        await backend.download_bytes("ns", "huge")
    await backend.upload_bytes("ns", "small", b"tag")
    assert await backend.download_bytes("ns", "small") == b"tag"


async def test_cancelled_download_leaves_nothing(
    gcs: FakeGcs, bucket: str, backends: list[Backend], tmp_path: Path
) -> None:
    backend = gcs_backend(backends, gcs.backend_config(bucket, concurrency=1))
    src = tmp_path / "src"
    write_random_file(src, 64 * MiB)
    await backend.upload("ns", "big", src)
    out = tmp_path / "out"
    out.mkdir()
    task = asyncio.create_task(backend.download("ns", "big", out / "dst"))
    await until(lambda: any(out.iterdir()), 10, "the download's temporary file")  # under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The cancellation waited for the thread, which stopped at its next chunk and cleaned up.
    assert os.listdir(out) == []
    assert await backend.stat("ns", "big") is not None  # the single worker is free again


async def test_calls_run_on_at_most_concurrency_threads(
    gcs: FakeGcs, bucket: str, backends: list[Backend]
) -> None:
    backend = gcs_backend(backends, gcs.backend_config(bucket, concurrency=2))
    await asyncio.gather(*(backend.upload_bytes("ns", f"o{i}", os.urandom(MiB)) for i in range(8)))
    workers = [t for t in threading.enumerate() if t.name.startswith(f"gcs-{bucket}")]
    assert 1 <= len(workers) <= 2


async def test_readiness_answers_while_every_transfer_thread_is_busy(
    gcs: FakeGcs, bucket: str, backends: list[Backend], tmp_path: Path
) -> None:
    """Uploads hold the only transfer thread (and one more waits): the readiness probe's stat
    runs on the metadata pool, so it answers at once instead of queueing behind them."""
    backend = gcs_backend(backends, gcs.backend_config(bucket, concurrency=1))
    with stalled_file(tmp_path / "slow") as stall:
        uploads = [asyncio.create_task(backend.upload("ns", f"o{i}", stall.path)) for i in range(2)]
        await until(lambda: pool_threads(f"gcs-{bucket}") == 1, 10, "the upload holding the transfer thread")
        await until(lambda: backend._transfers.queued == 1, 10, "the second upload queued behind it")
        try:
            await asyncio.wait_for(backend.ready(), 5)
            assert await asyncio.wait_for(backend.stat("ns", "o0"), 5) is None
            assert not any(upload.done() for upload in uploads)
        finally:
            stall.release()  # a FIFO cannot be seeked: the uploads may then fail, which is not the point
            await asyncio.gather(*uploads, return_exceptions=True)


async def test_loop_stays_responsive_during_a_large_transfer(
    gcs: FakeGcs, bucket: str, backends: list[Backend], tmp_path: Path
) -> None:
    """Uploading and downloading LAG_SIZE bytes: the loop's worst lag stays small, and stats
    issued meanwhile are answered while the transfer runs (how fast is up to fake-gcs-server,
    which is busy appending the chunks)."""
    backend = gcs_backend(backends, gcs.backend_config(bucket))
    src = tmp_path / "src"
    expected = write_random_file(src, LAG_SIZE)
    await backend.upload_bytes("ns", "small", b"x")
    lags: list[float] = []
    stat_times: list[float] = []

    async def ticker(done: asyncio.Event) -> None:
        while not done.is_set():
            started = time.monotonic()
            await asyncio.sleep(0.01)  # the thing measured: how late a 10 ms timer fires
            lags.append(time.monotonic() - started - 0.01)

    async def statter(done: asyncio.Event) -> None:
        while not done.is_set():
            started = time.monotonic()
            assert await backend.stat("ns", "small") is not None
            stat_times.append(time.monotonic() - started)
            await asyncio.sleep(0.2)  # pacing: a stat every 0.2 s, as a readiness probe would

    async def transfer() -> tuple[float, float]:
        started = time.monotonic()
        await backend.upload("ns", "big", src)
        middle = time.monotonic()
        await backend.download("ns", "big", tmp_path / "dst")
        return middle - started, time.monotonic() - middle

    done = asyncio.Event()
    watchers = [asyncio.create_task(ticker(done)), asyncio.create_task(statter(done))]
    try:
        up, down = await transfer()
    finally:
        done.set()
        await asyncio.gather(*watchers)
    assert sha256_file(tmp_path / "dst") == expected
    lags.sort()
    report = (f"{LAG_SIZE // MiB} MiB: upload {up:.1f}s, download {down:.1f}s; loop lag max "
              f"{lags[-1] * 1000:.0f} ms, p99 {lags[int(len(lags) * 0.99)] * 1000:.0f} ms over {len(lags)} ticks; "
              f"{len(stat_times)} stats during it, slowest {max(stat_times) * 1000:.0f} ms")
    print(report)
    assert lags[-1] < 0.5, report
    assert len(stat_times) >= 3 and max(stat_times) < 10, report


# ---- endpoint and configuration ------------------------------------------------------------------


async def test_storage_emulator_host_is_honoured(
    gcs: FakeGcs, bucket: str, backends: list[Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url + "/")
    backend = gcs_backend(backends, BackendConfig("gcs", GcsBackendConfig(bucket=bucket)))
    await backend.upload_bytes("ns", "via-env", b"emulated")
    assert gcs.read(bucket, "via-env") == b"emulated"


async def test_endpoint_down_is_a_quick_backend_error(backends: list[Backend], tmp_path: Path) -> None:
    config = GcsBackendConfig(bucket="nowhere", endpoint=f"http://127.0.0.1:{free_port()}", timeout=2,
                              retry_deadline=1)
    backend = gcs_backend(backends, BackendConfig("gcs", config))
    (tmp_path / "src").write_bytes(b"x" * 1000)
    calls = [
        backend.stat("ns", "blob"), backend.upload_bytes("ns", "blob", b"x"),
        backend.upload("ns", "blob", tmp_path / "src"), backend.download("ns", "blob", tmp_path / "dst"),
        backend.download_bytes("ns", "blob"), backend.list(""),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"gcs backend \(bucket nowhere\)"):
            await call
        assert time.monotonic() - started < 10
    assert os.listdir(tmp_path) == ["src"]


async def test_missing_bucket_is_an_error_not_absence(gcs: FakeGcs, backends: list[Backend]) -> None:
    backend = gcs_backend(backends, gcs.backend_config("no-such-bucket", retry_deadline=1))
    with pytest.raises(BackendError, match=r"no-such-bucket\): upload blob \(namespace ns\): bucket not found"):
        await backend.upload_bytes("ns", "blob", b"x")


def test_config_checks() -> None:
    def entry(**gcs: Any) -> NamespaceBackendConfig:
        return build(NamespaceBackendConfig, {"namespace": ".*", "backend": {"gcs": gcs}})

    kraken_style = entry(bucket="b", root_directory="/kraken/", name_path="sharded_docker_blob", username="u",
                         upload_part_size="32MiB", list_max_keys=100)
    config = kraken_style.backend.config
    assert config.chunk_size == 32 * MiB and config.root_directory == "/kraken/"
    assert entry(bucket="b").backend.config.chunk_size == 64 * MiB  # Kraken's default part size
    with pytest.raises(ConfigError, match="not both"):
        entry(bucket="b", upload_chunk_size="8MiB", upload_part_size="8MiB")
    with pytest.raises(ConfigError, match="multiple of 256KiB"):
        entry(bucket="b", upload_chunk_size=1000)
    with pytest.raises(ConfigError, match="bucket: required key is missing"):
        entry(root_directory="x")
    with pytest.raises(ConfigError, match="root_directory"):
        entry(bucket="b", root_directory="a/../b")


# ---- credentials -------------------------------------------------------------------------------


@dataclass
class TokenServer:
    url: str
    grants: list[str]


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    """An OAuth token endpoint: grants ``tok-<n>`` for a JWT assertion, refuses ``?refuse``."""
    grants: list[str] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        grants.append(str(form.get("grant_type")))
        if "refuse" in request.query:
            return web.json_response({"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                                     status=400)
        return web.json_response({"access_token": f"tok-{len(grants)}", "expires_in": 3600, "token_type": "Bearer"})

    app = web.Application()
    app.router.add_post("/token", token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield TokenServer(f"http://127.0.0.1:{server.port}/token", grants)
    await server.close()


def kraken_auth(username: str, access_blob: str) -> AuthConfig:
    """``auth:`` as a Kraken secrets file writes it, built by the config loader."""

    @dataclass
    class Holder:
        auth: AuthConfig = field(default_factory=dict)

    data = {"auth": {"gcs": {username: {"gcs": {"access_blob": access_blob}}}}}
    return build(Holder, data).auth


async def test_service_account_from_krakens_auth_shape(
    gcs: FakeGcs, bucket: str, backends: list[Backend], token_server: TokenServer
) -> None:
    auth = kraken_auth("team-a", service_account_json(token_server.url))
    assert "PRIVATE KEY" not in repr(auth)
    backend = gcs_backend(backends, gcs.backend_config(bucket, username="team-a"), auth=auth)
    requests_made = record(backend)
    await backend.upload_bytes("ns", "authed", b"with a token")
    assert await backend.download_bytes("ns", "authed") == b"with a token"
    assert token_server.grants == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert {header for _, _, header in requests_made.seen} == {"Bearer tok-1"}


async def test_refused_credential_is_a_backend_error(
    gcs: FakeGcs, bucket: str, backends: list[Backend], token_server: TokenServer
) -> None:
    auth = kraken_auth("team-a", service_account_json(token_server.url + "?refuse"))
    backend = gcs_backend(backends, gcs.backend_config(bucket, username="team-a", retry_deadline=1), auth=auth)
    with pytest.raises(BackendError, match=rf"gcs backend \(bucket {bucket}\): upload x \(namespace ns\): "
                                           r"RefreshError.*invalid_grant"):
        await backend.upload_bytes("ns", "x", b"x")


@pytest.mark.parametrize("blob,message", [
    ('{"type": "service_account", "private_key": "SECRET-KEY-MATERIAL"', r"access_blob is not JSON \(line 1"),
    ('["SECRET-KEY-MATERIAL"]', "access_blob is not a JSON object"),
    ('{"type": "service_account", "private_key": "SECRET-KEY-MATERIAL"}',
     "access_blob is not a usable credential: .*missing fields"),
    ('{"type": "service_account", "client_email": "a@b", "token_uri": "http://x", '
     '"private_key": "SECRET-KEY-MATERIAL"}',
     "access_blob is not a usable credential: .*PEM"),
    ('{"type": "external_account", "private_key": "SECRET-KEY-MATERIAL"}',
     "access_blob has type 'external_account'; expected service_account or authorized_user"),
])
def test_bad_credential_json_is_a_clear_error(gcs: FakeGcs, blob: str, message: str) -> None:
    context = BackendContext(credentials={"team-a": {"access_blob": Secret(blob)}})
    config = GcsBackendConfig(bucket="b", username="team-a", endpoint=gcs.url)
    with pytest.raises(ConfigError, match=rf"gcs backend \(bucket b\): auth\.gcs\.team-a\.{message}") as e:
        GcsBackend(config, context)
    assert "SECRET-KEY-MATERIAL" not in str(e.value)


def test_missing_credentials_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"gcs backend \(bucket b\): username 'nobody' has no credential set "
                                          r"under auth.gcs .*sets given: team-a"):
        GcsBackend(GcsBackendConfig(bucket="b", username="nobody"),
                   BackendContext(credentials={"team-a": {"access_blob": Secret("{}")}}))
    with pytest.raises(ConfigError, match=r"auth\.gcs\.team-a has no access_blob"):
        GcsBackend(GcsBackendConfig(bucket="b", username="team-a"),
                   BackendContext(credentials={"team-a": {"token": Secret("x")}}))
    # No username and no endpoint: application default credentials, here pointed at nothing.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    with pytest.raises(ConfigError, match=r"gcs backend \(bucket b\): no credentials: set username"):
        GcsBackend(GcsBackendConfig(bucket="b"), BackendContext())


def test_example_configs_load_with_krakens_secrets_shape() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "backends" / "gcs"
    origin = load_config(OriginConfig, example / "origin" / "gcs.yaml", secrets=example / "secrets.example.yaml")
    build_index = load_config(BuildIndexConfig, example / "build-index" / "gcs.yaml")
    assert origin.backends[0].backend.kind == build_index.backends[0].backend.kind == "gcs"
    assert origin.backends[0].backend.config.name_path == "sharded_docker_blob"
    assert build_index.backends[0].backend.config.name_path == "docker_tag"
    blob = kind_credentials(origin.auth, "gcs")["kraken"]["access_blob"].reveal()
    assert json.loads(blob)["type"] == "service_account"


def test_origin_refuses_to_start_without_its_gcs_credential(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    config = tmp_path / "origin.yaml"
    config.write_text(f"extends: {root}/config/origin/development.yaml\n"
                      f"store: {{root: {tmp_path}/store}}\nlisten: {{port: 0}}\n"
                      "backends:\n  - namespace: '.*'\n    backend: {gcs: {bucket: b, username: team-a}}\n")
    done = subprocess.run([sys.executable, "-m", "kraken", "origin", "--config", str(config)], cwd=root,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 2, done.stderr
    assert ("kraken origin: config error: gcs backend (bucket b): username 'team-a' has no credential set "
            "under auth.gcs") in done.stderr
