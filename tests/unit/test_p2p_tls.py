"""``p2p.tls``: its config is checked when loaded and its files when the session starts, and
torrents carry (and are checked against) the cluster CA."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kraken.agent.config import AgentConfig
from kraken.config import ConfigError, load_config
from kraken.core.metainfo import generate_metainfo, info_hash
from kraken.metrics import Metrics
from kraken.origin.config import OriginConfig
from kraken.p2p.config import P2PTLSConfig
from kraken.p2p.session import P2PError, P2PSession
from kraken.p2p.tls import PeerTLS, check_files, load_root, refuse_ssl_torrent
from tests.support.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def load(cls: type, overrides: dict[str, Any]) -> Any:
    return load_config(cls, None, overrides=overrides)


def test_the_ca_defaults_to_the_components_first_cas_entry(pki: Pki) -> None:
    tls = pki.p2p_section()
    del tls["ca"]
    for cls in (OriginConfig, AgentConfig):
        extra = {"store": {"root": "/tmp/x"}} if cls is AgentConfig else {}
        config = load(cls, {**extra, "tls": {"cas": [{"path": pki["ca.pem"]}]}, "p2p": {"tls": tls}})
        assert config.p2p.tls.ca.path == pki["ca.pem"]
        assert config.p2p.listen_interfaces().endswith("s")  # SSL only
    assert not load(OriginConfig, {}).p2p.listen_interfaces().endswith("s")


@pytest.mark.parametrize(("change", "error"), [
    ({"cert": None}, "enabled needs cert and key"),
    ({"ca": None}, "needs p2p.tls.ca or the component's tls.cas"),
])
def test_an_incomplete_p2p_tls_fails_at_load(pki: Pki, change: dict[str, str | None], error: str) -> None:
    tls = pki.p2p_section()
    for key in change:
        del tls[key]
    with pytest.raises(ConfigError, match=error):
        load(OriginConfig, {"p2p": {"tls": tls}})


@pytest.mark.parametrize(("change", "error"), [
    ({"ca": "peer.pem"}, "not self-signed"),
    ({"cert": "stranger-peer.pem", "key": "stranger-peer-key.pem", "passphrase": None}, "not signed directly"),
    ({"cert": "client.pem", "key": "client-key.pem", "passphrase": None}, "SAN DNS:*"),
    ({"passphrase": None}, "passphrase does not open it"),
    ({"key": "client-key.pem", "passphrase": None}, "not the key of"),
    ({"ca": "missing.pem"}, "No such file"),
])
async def test_bad_p2p_tls_files_fail_the_session_start(pki: Pki, change: dict[str, str | None], error: str) -> None:
    tls = pki.p2p_section()
    for key, name in change.items():
        if name is None:
            del tls[key]
        else:
            tls[key] = {"path": pki[name]}
    config = load(OriginConfig, {"p2p": {"tls": tls, "listen": {"host": "127.0.0.1", "port": 0}}})
    with pytest.raises(ValueError, match=error.replace("*", r"\*")):
        check_files(config.p2p.tls)
    with pytest.raises(P2PError, match="cannot use p2p.tls: .*" + error.replace("*", r"\*")):
        await P2PSession.start(config.p2p, Metrics("bad"), role="origin")


def test_disabled_p2p_tls_checks_nothing() -> None:
    assert not P2PTLSConfig(enabled=False, cert=P2PTLSConfig().cert).enabled
    load(OriginConfig, {"p2p": {"tls": {"enabled": False, "cert": {"path": "/nowhere"}}}})


def test_an_ssl_torrent_embeds_the_ca_and_is_checked_against_it(pki: Pki, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(300_000))
    root = load_root(pki["ca.pem"])
    tls = PeerTLS.load(load(OriginConfig, {"p2p": {"tls": pki.p2p_section()}}).p2p.tls)
    plain = generate_metainfo(blob, "blob", 1 << 16)
    ssl = generate_metainfo(blob, "blob", 1 << 16, tls.root_pem)
    assert info_hash(ssl) != info_hash(plain)  # the CA is part of the info dictionary
    assert generate_metainfo(blob, "blob", 1 << 16, tls.root_pem) == ssl  # deterministic
    assert lt.torrent_info(ssl).ssl_cert() == tls.root_pem and tls.root == root
    tls.check(lt.torrent_info(ssl))
    with pytest.raises(ValueError, match="not an SSL torrent"):
        tls.check(lt.torrent_info(plain))
    stranger_root = Path(pki["stranger-peer.pem"]).read_text()  # not a CA, but a different root
    with pytest.raises(ValueError, match="is not p2p.tls.ca"):
        tls.check(lt.torrent_info(generate_metainfo(blob, "blob", 1 << 16, stranger_root)))
    with pytest.raises(ValueError, match="has no p2p.tls"):
        refuse_ssl_torrent(lt.torrent_info(ssl))
    refuse_ssl_torrent(lt.torrent_info(plain))


def test_the_peer_pair_is_handed_over_in_memory(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No file is written (a temporary DH file used to outlive a crash or a cancelled start),
    and the key, opened with its passphrase, stays out of repr."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    tls = PeerTLS.load(load(OriginConfig, {"p2p": {"tls": pki.p2p_section()}}).p2p.tls)
    assert list(scratch.iterdir()) == []
    key = serialization.load_pem_private_key(tls.key_pem.encode(), None)  # no passphrase needed any more
    cert = x509.load_pem_x509_certificate(tls.cert_pem.encode())
    assert key.public_key() == cert.public_key()
    assert "PRIVATE KEY" not in repr(tls)
