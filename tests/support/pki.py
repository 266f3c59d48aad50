"""A throwaway PKI for TLS tests: a cluster CA, a server certificate (SAN ``kraken``,
``localhost``, ``127.0.0.1``) whose key is encrypted with a passphrase file, a client
certificate, and a client certificate from an unrelated CA (ECDSA P-256, made with the
devcluster's generator, :mod:`kraken.devcluster.tls`); for piece traffic (``p2p.tls``) a peer
certificate (SAN ``DNS:*``, key protected by the passphrase file) and one from the unrelated
CA (``stranger-peer``)."""
from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from kraken.devcluster.net import ProbeTLS
from kraken.devcluster.tls import PEER_SAN, issue, new_ca, write_pair

PASSPHRASE = b"correct horse"
SERVER_NAME = "kraken"


@dataclass(frozen=True)
class Pki:
    dir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.dir / name)

    def section(self, *, server: bool = True, client: bool = True) -> dict[str, Any]:
        """A component's ``tls:`` section: the cluster CA, and the server (passphrase-protected
        key) and client pairs as asked."""
        tls: dict[str, Any] = {"name": SERVER_NAME, "cas": [{"path": self["ca.pem"]}]}
        if server:
            tls["server"] = {"cert": {"path": self["server.pem"]}, "key": {"path": self["server-key.pem"]},
                             "passphrase": {"path": self["passphrase"]}}
        if client:
            tls["client"] = {"cert": {"path": self["client.pem"]}, "key": {"path": self["client-key.pem"]}}
        return tls

    def p2p_section(self, peer: str = "peer") -> dict[str, Any]:
        """``p2p.tls`` with the ``peer`` pair (``peer`` or ``stranger-peer``), the cluster CA
        embedded."""
        section: dict[str, Any] = {"enabled": True, "cert": {"path": self[f"{peer}.pem"]},
                                   "key": {"path": self[f"{peer}-key.pem"]}, "ca": {"path": self["ca.pem"]}}
        if peer == "peer":
            section["passphrase"] = {"path": self["passphrase"]}
        return section

    def plain_server_key(self) -> str:
        """The server key without its passphrase, for servers that take no passphrase
        (distribution's ``http.tls.key``); written next to the others on first use."""
        path = self.dir / "server-key-plain.pem"
        if not path.exists():
            key = serialization.load_pem_private_key((self.dir / "server-key.pem").read_bytes(), PASSPHRASE)
            path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(path)

    def probe(self) -> ProbeTLS:
        return ProbeTLS(self["ca.pem"], self["client.pem"], self["client-key.pem"])

    def context(self, cert: str | None = "client") -> ssl.SSLContext:
        """A client context trusting the cluster CA only, presenting ``cert`` (``client``,
        ``stranger`` from the unrelated CA, or None); the host name is checked too (tests dial
        127.0.0.1, which the server certificate names)."""
        ctx = ProbeTLS(self["ca.pem"], *((self[f"{cert}.pem"], self[f"{cert}-key.pem"]) if cert else ())).context()
        ctx.check_hostname = True
        return ctx


def make_pki(dir: Path, server_ips: Sequence[str] = ()) -> Pki:
    """The files :class:`Pki` names, made with the devcluster's generator; the server
    certificate also names ``server_ips`` (a registry that dockerd must verify listens on a
    non-loopback address)."""
    dir.mkdir(parents=True, exist_ok=True)
    ca = new_ca("kraken test CA", days=1)
    write_pair(dir, "ca", ca)
    write_pair(dir, "server", issue(ca, "kraken-server", [SERVER_NAME, "localhost", "127.0.0.1", *server_ips],
                     server=True, days=1),
               passphrase=PASSPHRASE)
    (dir / "passphrase").write_bytes(PASSPHRASE + b"\n")
    write_pair(dir, "client", issue(ca, "kraken-client", server=False, days=1))
    write_pair(dir, "peer", issue(ca, "kraken-peer", [PEER_SAN], server=True, days=1), passphrase=PASSPHRASE)
    stranger_ca = new_ca("another CA", days=1)
    write_pair(dir, "stranger", issue(stranger_ca, "stranger", server=False, days=1))
    write_pair(dir, "stranger-peer", issue(stranger_ca, "stranger-peer", [PEER_SAN], server=True, days=1))
    return Pki(dir)
