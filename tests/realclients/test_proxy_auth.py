"""Push authentication at the proxy, with real clients: a real dockerd logs in and pushes,
skopeo pushes with ``--dest-creds``, against a herd whose proxy has ``auth: {htpasswd}`` and
one whose proxy has ``auth: {token}`` (a token server started by the test)."""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Herd, start_herd
from tests.support.docker import Dockerd
from tests.support.ocigen import GeneratedImage, generate_oci_layout
from tests.support.process import ClientError
from tests.support.registry_http import MANIFEST_ACCEPT, http_request, sha256_bytes
from tests.support.skopeo import Skopeo
from tests.support.tokenserver import SigningKey, TokenIssuer, TokenServer, TokenUser, write_htpasswd

MiB = 1024 * 1024
REALM = "kraken-test"
SERVICE = "kraken-proxy"
ISSUER = "test-token-issuer"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    return generate_oci_layout(tmp_path_factory.mktemp("oci"), "v1", [1 * MiB], seed=20261211)


@pytest.fixture(scope="module")
def htpasswd_herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    workdir = tmp_path_factory.mktemp("htpasswd-herd")
    path = write_htpasswd(workdir / "htpasswd", {"alice": "s3cret-pw", "bob": "other-pw"})
    auth = {"htpasswd": {"realm": REALM, "path": str(path)}}
    herd = start_herd(workdir / "herd", overrides={"proxy": {"auth": auth}})
    try:
        yield herd
    finally:
        herd.stop()


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    issuer = TokenIssuer(ISSUER, SERVICE, SigningKey.generate())
    server = TokenServer(issuer, {
        "writer": TokenUser("writer-pw", {"*": ["pull", "push"]}),
        "reader": TokenUser("reader-pw", {"*": ["pull"]}),
    }).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def token_herd(tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer) -> Iterator[Herd]:
    workdir = tmp_path_factory.mktemp("token-herd")
    bundle = workdir / "bundle.pem"
    bundle.write_bytes(token_server.issuer.signer.pem)
    auth = {"token": {"realm": token_server.realm, "service": SERVICE, "issuer": ISSUER,
                      "rootcertbundle": str(bundle)}}
    herd = start_herd(workdir / "herd", overrides={"proxy": {"auth": auth}})
    try:
        yield herd
    finally:
        herd.stop()


def _login(dockerd: Dockerd, host: str, user: str, password: str) -> None:
    out = dockerd.run("login", "-u", user, "--password-stdin", host, input=password.encode())
    assert "Login Succeeded" in out.stdout


def _push_loaded(dockerd: Dockerd, image: GeneratedImage, target: str) -> str:
    dockerd.load_oci(image, "local/auth-src:1")
    dockerd.tag("local/auth-src:1", target)
    return dockerd.push(target)


def test_htpasswd_challenge(htpasswd_herd: Herd) -> None:
    url = f"{htpasswd_herd.proxy.url}/v2/"
    anonymous = http_request(url)
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"] == f'Basic realm="{REALM}"'
    assert json.loads(anonymous.body)["errors"][0]["code"] == "UNAUTHORIZED"
    assert http_request(url, headers=_basic("alice", "wrong")).status == 401
    assert http_request(url, headers=_basic("alice", "s3cret-pw")).status == 200
    # Pulls follow the same auth: a manifest read without credentials is refused too.
    assert http_request(f"{htpasswd_herd.proxy.url}/v2/test/none/manifests/1").status == 401


def test_htpasswd_docker_login_push(dockerd: Dockerd, htpasswd_herd: Herd, image: GeneratedImage) -> None:
    host = htpasswd_herd.proxy.addr
    target = f"{host}/auth/docker:1"
    with pytest.raises(ClientError) as refused:
        _push_loaded(dockerd, image, target)
    assert "no basic auth credentials" in str(refused.value) or "unauthorized" in str(refused.value).lower()
    with pytest.raises(ClientError):
        _login(dockerd, host, "alice", "not-her-password")
    _login(dockerd, host, "alice", "s3cret-pw")
    try:
        digest = dockerd.push(target)
        got = http_request(f"{htpasswd_herd.proxy.url}/v2/auth/docker/manifests/1",
                           headers={**_basic("bob", "other-pw"), "Accept": MANIFEST_ACCEPT})
        assert got.status == 200 and sha256_bytes(got.body) == digest
        dockerd.rmi(target)
        dockerd.pull(target)
        assert dockerd.image_id(target) == image.config_digest
    finally:
        dockerd.run("logout", host, check=False)
        dockerd.rmi(target, "local/auth-src:1")


def test_htpasswd_skopeo_creds(htpasswd_herd: Herd, image: GeneratedImage, tmp_path: Path) -> None:
    host = htpasswd_herd.proxy.addr
    ref = f"docker://{host}/auth/skopeo:1"
    with Skopeo() as sk:
        with pytest.raises(ClientError):
            sk.copy(image.oci_ref, ref, extra_args=["--dest-creds", "alice:wrong"])
        with pytest.raises(ClientError):
            sk.copy(image.oci_ref, ref)
        sk.copy(image.oci_ref, ref, extra_args=["--dest-creds", "alice:s3cret-pw"])
        sk.copy(ref, f"dir:{tmp_path / 'pulled'}", extra_args=["--src-creds", "bob:other-pw"])
    assert (tmp_path / "pulled" / "manifest.json").read_bytes() == image.manifest
    log = htpasswd_herd.proxy.log_path.read_text(errors="replace")
    for leaked in ("s3cret-pw", "alice:wrong", base64.b64encode(b"alice:s3cret-pw").decode()):
        assert leaked not in log


def test_token_challenge(token_herd: Herd, token_server: TokenServer) -> None:
    proxy = token_herd.proxy.url
    anonymous = http_request(f"{proxy}/v2/team/app/manifests/1", method="PUT", data=b"{}")
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"] == (
        f'Bearer realm="{token_server.realm}",service="{SERVICE}",scope="repository:team/app:pull,push"')
    assert json.loads(anonymous.body)["errors"][0]["code"] == "UNAUTHORIZED"
    pull_only = token_server.issuer.issue("reader", [{"type": "repository", "name": "team/app", "actions": ["pull"]}])
    bearer = {"Authorization": f"Bearer {pull_only}"}
    assert http_request(f"{proxy}/v2/", headers=bearer).status == 200
    assert http_request(f"{proxy}/v2/team/app/manifests/1", headers=bearer).status == 404
    refused = http_request(f"{proxy}/v2/team/app/manifests/1", method="PUT", data=b"{}", headers=bearer)
    assert refused.status == 401 and 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    forged = SigningKey.generate()
    other = token_server.issuer.issue("writer", [], signer=forged, headers={"kid": forged.kid})
    assert http_request(f"{proxy}/v2/", headers={"Authorization": f"Bearer {other}"}).status == 401


def test_token_docker_login_push(dockerd: Dockerd, token_herd: Herd, token_server: TokenServer,
                                 image: GeneratedImage) -> None:
    host = token_herd.proxy.addr
    target = f"{host}/team/app:1"
    _login(dockerd, host, "reader", "reader-pw")
    try:
        with pytest.raises(ClientError) as refused:
            _push_loaded(dockerd, image, target)
        assert "denied" in str(refused.value).lower() or "unauthorized" in str(refused.value).lower()
        _login(dockerd, host, "writer", "writer-pw")
        digest = dockerd.push(target)
        dockerd.rmi(target)
        _login(dockerd, host, "reader", "reader-pw")
        dockerd.pull(target)
        assert dockerd.image_id(target) == image.config_digest
        assert f"{host}/team/app@{digest}" in dockerd.repo_digests(target)
    finally:
        dockerd.run("logout", host, check=False)
        dockerd.rmi(target, "local/auth-src:1")
    scopes = {r.get("scope", "") for r in token_server.requests}
    assert {"repository:team/app:push,pull", "repository:team/app:pull"} <= scopes
    assert all(r.get("service") == SERVICE for r in token_server.requests)
