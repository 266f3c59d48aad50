"""The SSL contexts of the ``tls:`` section (kraken.http.tls) and the client's scheme."""
from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from kraken.http.client import create_client
from kraken.http.config import HttpClientConfig, SecretFile, TLSConfig, X509Pair
from kraken.http.tls import ClientAuth, client_context, server_context
from tests.support.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(pki: Pki, **section: object) -> TLSConfig:
    def pair(value: object) -> X509Pair:
        assert isinstance(value, dict)
        return X509Pair(**{k: SecretFile(**v) for k, v in value.items()})

    raw = pki.section()
    return TLSConfig(name=raw["name"], cas=[SecretFile(**c) for c in raw["cas"]],
                     server=pair(section.get("server", raw["server"])), client=pair(raw["client"]))


def test_client_trusts_only_the_cluster_ca(pki: Pki) -> None:
    ctx = client_context(tls_config(pki))
    assert ctx is not None
    assert ctx.cert_store_stats()["x509_ca"] == 1
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


def test_server_asks_for_client_certificates_only_where_required(pki: Pki) -> None:
    config = tls_config(pki)
    required = server_context(config, ClientAuth.REQUIRED)
    plain = server_context(config, ClientAuth.NONE)
    assert required is not None and required.verify_mode is ssl.CERT_OPTIONAL
    assert plain is not None and plain.verify_mode is ssl.CERT_NONE
    assert server_context(TLSConfig(), ClientAuth.REQUIRED) is None


def test_a_wrong_passphrase_fails_the_start(pki: Pki, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    server = {"cert": {"path": pki["server.pem"]}, "key": {"path": pki["server-key.pem"]},
              "passphrase": {"path": str(wrong)}}
    with pytest.raises(ssl.SSLError):
        server_context(tls_config(pki, server=server), ClientAuth.NONE)


async def test_the_client_calls_kraken_services_over_https(pki: Pki) -> None:
    http = create_client(HttpClientConfig(), tls_config(pki))
    plain = create_client(HttpClientConfig())
    try:
        assert http.secure and http.url("127.0.0.1:1", "/x") == "https://127.0.0.1:1/x"
        assert not plain.secure and plain.url("127.0.0.1:1", "/x") == "http://127.0.0.1:1/x"
    finally:
        await http.close()
        await plain.close()
