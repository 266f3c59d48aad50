"""The devcluster's development PKI (kraken/devcluster/tls.py): what it makes, what it reuses on
a restart, what it makes again, and the ``tls:`` overlays and CLI that use it."""
from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from kraken.agent.config import AgentConfig
from kraken.config import build
from kraken.devcluster.__main__ import main
from kraken.devcluster.tls import COMPONENTS, INTERNAL, DevPki, issue, names_host, new_ca, write_pair
from kraken.http.config import TLSConfig
from kraken.http.tls import ClientAuth, client_context, server_context
from kraken.origin.config import OriginConfig


def _sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)}


def test_makes_a_ca_a_client_pair_and_a_server_pair_per_component(tmp_path: Path) -> None:
    pki = DevPki(tmp_path / "tls")
    written = pki.ensure(["localhost", "127.0.0.1", "10.0.0.5"])
    assert set(written) == {"ca.pem", "client.pem", "peer.pem", *(f"{c}.pem" for c in COMPONENTS)}
    assert pki.missing() == []
    assert _sans(tmp_path / "tls" / "peer.pem") == {"*"}  # joins every SSL torrent (p2p.tls)
    assert _sans(tmp_path / "tls" / "origin.pem") >= {"origin", "localhost", "127.0.0.1", "10.0.0.5"}
    assert (tmp_path / "tls" / "client-key.pem").stat().st_mode & 0o077 == 0
    # The overlays load as Kraken's tls: section and give working contexts; only the
    # internal components serve HTTPS, every one calls over mTLS.
    for component, overlay in pki.overrides().items():
        tls = build(TLSConfig, overlay["tls"])
        assert tls.serves == (component in INTERNAL), component
        assert tls.calls and tls.client.configured()
        assert isinstance(client_context(tls), ssl.SSLContext)
        if tls.serves:
            assert isinstance(server_context(tls, ClientAuth.REQUIRED), ssl.SSLContext)


def test_origins_and_agents_get_p2p_tls_with_the_peer_pair(tmp_path: Path) -> None:
    pki = DevPki(tmp_path)
    pki.ensure(["127.0.0.1"])
    overlays = pki.overrides()
    assert {c for c, o in overlays.items() if "p2p" in o} == {"origin", "agent"}
    origin = build(OriginConfig, overlays["origin"])  # the files pass the checks made at load
    assert origin.p2p.tls.enabled and origin.p2p.tls.ca.path == pki.ca
    agent = build(AgentConfig, {**overlays["agent"], "store": {"root": str(tmp_path / "agent")}})
    assert agent.p2p.listen_interfaces().endswith("s")
    assert not any("p2p" in o for o in DevPki(tmp_path, p2p=False).overrides().values())


def test_valid_files_are_reused_and_new_hosts_reissue_only_the_server_leaves(tmp_path: Path) -> None:
    pki = DevPki(tmp_path)
    pki.ensure(["127.0.0.1"])
    ca = (tmp_path / "ca.pem").read_bytes()
    client = (tmp_path / "client.pem").read_bytes()
    assert pki.ensure(["127.0.0.1"]) == []
    written = pki.ensure(["127.0.0.1", "herd.example"])
    assert set(written) == {f"{c}.pem" for c in COMPONENTS}
    assert (tmp_path / "ca.pem").read_bytes() == ca and (tmp_path / "client.pem").read_bytes() == client
    assert "herd.example" in _sans(tmp_path / "tracker.pem")


def test_an_expiring_or_foreign_file_is_made_again(tmp_path: Path) -> None:
    pki = DevPki(tmp_path)
    pki.ensure(["127.0.0.1"])
    ca = (tmp_path / "ca.pem").read_bytes()
    # A leaf from another CA, and one about to expire.
    write_pair(tmp_path, "origin", issue(new_ca("stranger"), "origin", ["origin", "127.0.0.1"], server=True))
    write_pair(tmp_path, "client", issue(new_ca("stranger"), "c", server=False, days=1))
    assert set(pki.ensure(["127.0.0.1"])) == {"origin.pem", "client.pem"}
    # An expiring CA: everything again.
    write_pair(tmp_path, "ca", new_ca("short", days=2))
    assert set(pki.ensure(["127.0.0.1"])) == {"ca.pem", "client.pem", "peer.pem",
                                              *(f"{c}.pem" for c in COMPONENTS)}
    assert (tmp_path / "ca.pem").read_bytes() != ca
    cert = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=300)


def test_the_tls_action_writes_a_directory_for_deploy_scripts(tmp_path: Path) -> None:
    assert main(["tls", "--out", str(tmp_path / "certs"), "--hosts", "10.1.0.1,herd", "--hosts", "10.1.0.2"]) == 0
    assert DevPki(tmp_path / "certs").missing() == []
    assert {"10.1.0.1", "herd", "10.1.0.2", "127.0.0.1"} <= _sans(tmp_path / "certs" / "build-index.pem")


def test_a_tls_dir_lacking_files_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "certs").mkdir()
    code = main(["start", "--tls-dir", str(tmp_path / "certs"), "--workdir", str(tmp_path / "dc")])
    assert code == 1
    assert "lacks ca.pem" in capsys.readouterr().err
    assert not (tmp_path / "dc").exists()


def test_an_agent_host_needs_only_the_ca_the_client_pair_and_the_peer_pair(tmp_path: Path) -> None:
    """``--role agent --tls-dir`` asks for no server key: an agent host never holds one of the
    herd's (it could impersonate the herd with it). It needs the peer pair: origins put pieces
    on SSL torrents, which an agent without ``p2p.tls`` refuses."""
    pki = DevPki(tmp_path)
    pki.ensure(["10.1.0.1"])
    agent_files = ("ca.pem", "client.pem", "client-key.pem", "peer.pem", "peer-key.pem")
    for name in [p.name for p in tmp_path.iterdir() if p.name not in agent_files]:
        (tmp_path / name).unlink()
    assert pki.missing(()) == []
    assert "origin.pem" in pki.missing()
    (tmp_path / "peer-key.pem").unlink()
    assert pki.missing(()) == ["peer-key.pem"]


def test_unnamed_lists_the_herd_certificates_a_client_would_refuse(tmp_path: Path) -> None:
    pki = DevPki(tmp_path)
    pki.ensure(["10.1.0.1", "herd.example"])
    assert pki.unnamed("10.1.0.1") == pki.unnamed("herd.example") == pki.unnamed("HERD.example.") == []
    assert pki.unnamed("10.1.0.2") == ["origin.pem", "tracker.pem", "build-index.pem"]
    (tmp_path / "tracker.pem").unlink()
    assert pki.unnamed("10.1.0.1") == ["tracker.pem"]


@pytest.mark.parametrize(("host", "named"), [
    ("10.1.0.1", True), ("10.1.0.2", False), ("::1", True), ("a.herd.example", True),
    ("herd.example", False), ("b.a.herd.example", False), ("10.1.0.1.nip.io", False),
])
def test_names_host_matches_as_tls_clients_do(host: str, named: bool) -> None:
    """An address only by an IP: SAN, a name by a DNS: SAN, a wildcard for one label."""
    _, cert = issue(new_ca("ca"), "leaf", ["10.1.0.1", "::1", "*.herd.example"], server=True)
    assert names_host(cert, host) is named
