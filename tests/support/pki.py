"""A throwaway PKI for TLS tests: a cluster CA, a server certificate (SAN ``kraken``,
``localhost``, ``127.0.0.1``) whose key is encrypted with a passphrase file, a client
certificate, and a client certificate from an unrelated CA (ECDSA P-256, made with
``cryptography``)."""
from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kraken.devcluster.net import ProbeTLS

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
        ``stranger`` from the unrelated CA, or None), checking no host name (tests dial
        127.0.0.1, whose SAN the server certificate carries anyway)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self["ca.pem"])
        if cert is not None:
            ctx.load_cert_chain(self[f"{cert}.pem"], self[f"{cert}-key.pem"])
        return ctx


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str, server: bool,
          ips: Sequence[str] = ()) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName(SERVER_NAME), x509.DNSName("localhost"),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", *ips)),
        ]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(dir: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate,
           passphrase: bytes | None = None) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    (dir / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (dir / f"{name}-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def make_pki(dir: Path, server_ips: Sequence[str] = ()) -> Pki:
    """The PKI in ``dir``; the server certificate also names ``server_ips`` (a registry that
    dockerd must verify listens on a non-loopback address)."""
    dir.mkdir(parents=True, exist_ok=True)
    ca = _ca("kraken test CA")
    (dir / "ca.pem").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    _write(dir, "server", *_leaf(ca, "kraken-server", server=True, ips=server_ips), passphrase=PASSPHRASE)
    (dir / "passphrase").write_bytes(PASSPHRASE + b"\n")
    _write(dir, "client", *_leaf(ca, "kraken-client", server=False))
    _write(dir, "stranger", *_leaf(_ca("another CA"), "stranger", server=False))
    return Pki(dir)
