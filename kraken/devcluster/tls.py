"""Development certificates: a cluster CA, one server pair per component, one client pair and
one peer pair (ECDSA P-256, made with ``cryptography``), and the ``tls:`` and ``p2p.tls``
overlays that turn TLS and mTLS on for every hop of the devcluster, piece traffic included.

``python -m kraken.devcluster start --tls`` keeps them in ``<workdir>/tls/``;
``python -m kraken.devcluster tls --out DIR --hosts ...`` makes the same files for a
multi-host cluster (``deploy_*.sh --tls-dir DIR``). Files already there are reused while they
are valid (not expiring within :data:`RENEW_BEFORE`, signed by the CA there, naming every
host asked), so a restart keeps the certificates clients already trust. The CA's key stays
beside them: these are development certificates, not a production PKI (docs/SECURITY.md).
"""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kraken.devcluster.net import ProbeTLS
from kraken.http.tls import signed_directly_by

#: The components that get a server pair (the proxy's and agents' are used only when their
#: registries are asked to serve TLS).
COMPONENTS = ("testfs", "origin", "tracker", "build-index", "proxy", "agent")
#: Serve HTTPS and require the cluster's client certificate (the tracker but for announces).
INTERNAL = ("testfs", "origin", "tracker", "build-index")
#: The servers other hosts (and the herd's own components) dial at the herd's address.
DIALLED = ("origin", "tracker", "build-index")
#: The components that exchange pieces, and so get ``p2p.tls`` (with the peer pair).
PEERS = ("origin", "agent")
#: The peer pair's name. Its only SAN is ``DNS:*``: libtorrent accepts a peer of an SSL torrent
#: whose certificate names the torrent (a digest) or ``*``. It is a pair of its own rather than
#: a star on ``client.pem``, so the certificate every HTTPS call presents claims no name.
PEER = "peer"
PEER_SAN = "*"
CA_DAYS = 365
LEAF_DAYS = 90
#: A certificate expiring sooner than this is made again.
RENEW_BEFORE = datetime.timedelta(days=7)

Key = ec.EllipticCurvePrivateKey
Pair = tuple[Key, x509.Certificate]


def _name(cn: str, unit: str = "") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kraken devcluster")]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (builder.serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days)))


def new_ca(cn: str, days: int = CA_DAYS) -> Pair:
    """A self-signed CA that signs leaves directly (libtorrent's SSL torrents accept no
    intermediate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    cert = (_validity(x509.CertificateBuilder(), days).subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def san(host: str) -> x509.GeneralName:
    """An ``IP:`` entry for an address (Python, curl and libtorrent match IPs only against
    those), else a ``DNS:`` entry."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(ca: Pair, cn: str, hosts: Sequence[str] = (), *, server: bool, unit: str = "",
          days: int = LEAF_DAYS) -> Pair:
    """A leaf signed by ``ca``: a server certificate (serverAuth and clientAuth, ``hosts`` as
    its SANs) or a client one (clientAuth)."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (_validity(x509.CertificateBuilder(), days).subject_name(_name(cn, unit)).issuer_name(ca_cert.subject)
               .public_key(key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([san(h) for h in dict.fromkeys(hosts)]),
                                        critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def write_pair(dir: Path, name: str, pair: Pair, passphrase: bytes | None = None) -> None:
    """``<name>.pem`` and ``<name>-key.pem`` (PKCS#8, encrypted when ``passphrase`` is given,
    readable by its owner only)."""
    key, cert = pair
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    (dir / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = dir / f"{name}-key.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def local_hosts(*extra: str) -> list[str]:
    """The names a client on this host may dial: loopback, the host's name, its addresses, and
    ``extra`` (the herd's advertised address)."""
    hosts = ["localhost", "127.0.0.1", "::1", *extra]
    name = socket.gethostname()
    hosts.append(name)
    with contextlib.suppress(OSError):
        hosts += [str(info[4][0]) for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)]
    return [h for h in dict.fromkeys(hosts) if h and h not in ("0.0.0.0", "::")]


def _load(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _fresh(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE


def names_host(cert: x509.Certificate, host: str) -> bool:
    """Whether a TLS client dialling ``host`` accepts ``cert``'s names: an address only by an
    ``IP:`` SAN, a name by a ``DNS:`` SAN, ``*.`` matching one leftmost label."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in ext.get_values_for_type(x509.IPAddress)
    except ValueError:
        pass
    host = host.lower().rstrip(".")
    for name in (str(n).lower().rstrip(".") for n in ext.get_values_for_type(x509.DNSName)):
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:] and "." in host):
            return True
    return False


def _names(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in ext.get_values_for_type(x509.DNSName)} | {
        str(n) for n in ext.get_values_for_type(x509.IPAddress)}


@dataclass(frozen=True)
class DevPki:
    """The files of a development PKI in ``dir`` (``ca.pem``, ``client.pem``,
    ``client-key.pem``, ``<component>.pem``/``<component>-key.pem``, and the peer pair
    ``peer.pem``/``peer-key.pem`` for piece traffic) and the ``tls:`` and ``p2p.tls``
    sections that use them. Naming the files needs none of them to exist yet (a start checks
    its plan before it writes anything)."""

    dir: Path
    #: Also turn ``p2p.tls`` on for origins and agents, with ``peer.pem``/``peer-key.pem``.
    p2p: bool = True

    def path(self, name: str) -> str:
        return str(self.dir.resolve() / name)

    @property
    def ca(self) -> str:
        return self.path("ca.pem")

    def missing(self, serving: Iterable[str] = INTERNAL) -> list[str]:
        """The files a host needs that ``dir`` lacks (for ``--tls-dir``): the CA, the client
        pair, the peer pair (every host exchanges pieces over ``p2p.tls``: origins and agents
        must agree), and the server pairs of the components it runs that serve HTTPS (none on
        an agent host, which so never holds a key the herd's servers prove themselves with)."""
        wanted = ["ca.pem", "client.pem", "client-key.pem",
                  *((f"{PEER}.pem", f"{PEER}-key.pem") if self.p2p else ()),
                  *(f"{c}{suffix}" for c in serving for suffix in (".pem", "-key.pem"))]
        return [name for name in wanted if not (self.dir / name).is_file()]

    def unnamed(self, host: str, components: Iterable[str] = DIALLED) -> list[str]:
        """The server certificates of ``components`` in ``dir`` that a client dialling
        ``host`` would refuse (no SAN matches it), so a deploy can say so before it starts."""
        return [f"{c}.pem" for c in components
                if (cert := _load(self.dir / f"{c}.pem")) is None or not names_host(cert, host)]

    def section(self, component: str, *, serve: bool) -> dict[str, Any]:
        """A component's ``tls:`` overlay: the CA, the client pair (every component calls
        over mTLS), and its server pair when it ``serve``\\ s HTTPS. No ``name``: clients check
        the host they dial, which the server certificates carry."""
        tls: dict[str, Any] = {"cas": [{"path": self.ca}],
                               "client": {"cert": {"path": self.path("client.pem")},
                                          "key": {"path": self.path("client-key.pem")}}}
        if serve:
            tls["server"] = {"cert": {"path": self.path(f"{component}.pem")},
                             "key": {"path": self.path(f"{component}-key.pem")}}
        return tls

    def overrides(self, serving: Iterable[str] = INTERNAL) -> dict[str, dict[str, Any]]:
        """Per component, the ``tls:`` overlay of the devcluster: ``serving`` serve HTTPS (and
        require client certificates where the component does), every component calls over
        mTLS; the proxy's and agents' registries stay plain HTTP unless named in ``serving``.
        Every host holds the client certificate its announce relay presents, so the tracker
        takes announces only from certificate holders (``announce_requires_certificate: all``)."""
        serve = set(serving)
        overlays: dict[str, dict[str, Any]] = {c: {"tls": self.section(c, serve=c in serve)} for c in COMPONENTS}
        if "tracker" in serve:
            overlays["tracker"]["announce_requires_certificate"] = "all"
        if self.p2p:
            for component in PEERS:
                overlays[component]["p2p"] = {"tls": self.p2p_section()}
        return overlays

    def p2p_section(self) -> dict[str, Any]:
        """``p2p.tls`` of origins and agents: the peer pair (SAN ``DNS:*``), the CA from ``tls.cas``."""
        return {"enabled": True, "cert": {"path": self.path("peer.pem")}, "key": {"path": self.path("peer-key.pem")}}

    def serving(self) -> set[str]:
        """The components :meth:`overrides` has serve HTTPS: their probes need :meth:`probe`."""
        return {c for c, o in self.overrides().items() if "server" in o["tls"]}

    def probe(self) -> ProbeTLS:
        return ProbeTLS(self.ca, self.path("client.pem"), self.path("client-key.pem"))

    def ensure(self, hosts: Sequence[str], components: Sequence[str] = COMPONENTS) -> list[str]:
        """Make what is missing or no longer valid; returns the names of the files written.
        A CA that is missing, unreadable or expiring is made again, and every leaf with it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        ca = self._ca()
        if ca is None:
            ca = new_ca("kraken devcluster CA")
            write_pair(self.dir, "ca", ca)
            written.append("ca.pem")
        # name, CN, SANs, server (serverAuth too), the SANs a kept certificate must have
        leaves = [("client", "kraken-client", (), False, set()), (PEER, "kraken-peer", [PEER_SAN], True, {PEER_SAN}),
                  *((c, c, [c, *hosts], True, set(hosts)) for c in components)]
        for name, cn, leaf_hosts, server, wanted in leaves:
            cert = _load(self.dir / f"{name}.pem")
            if (cert is not None and (self.dir / f"{name}-key.pem").is_file() and _fresh(cert)
                    and signed_directly_by(cert, ca[1]) and wanted <= _names(cert)):
                continue
            write_pair(self.dir, name, issue(ca, cn, leaf_hosts, server=server, unit=name))
            written.append(f"{name}.pem")
        return written

    def _ca(self) -> Pair | None:
        cert = _load(self.dir / "ca.pem")
        try:
            key = serialization.load_pem_private_key((self.dir / "ca-key.pem").read_bytes(), None)
        except (OSError, ValueError, TypeError):
            return None
        if cert is None or not isinstance(key, ec.EllipticCurvePrivateKey) or not _fresh(cert):
            return None
        if key.public_key() != cert.public_key():
            return None
        return key, cert
