"""Piece traffic over TLS (``p2p.tls``): libtorrent's SSL torrents.

An SSL torrent carries a CA certificate in its info dictionary (``ssl-cert``, so the CA is
part of the info-hash). libtorrent then talks to that torrent's peers only over TLS, both
sides present a certificate, and a peer is accepted when its certificate is signed
**directly** by that CA (the first certificate of ``ssl-cert``; no intermediate, no system
CA) and names the torrent (the blob's digest) or ``*`` in a ``DNS:`` SAN. Origins embed the
cluster CA when they generate metainfo (:func:`kraken.core.metainfo.generate_metainfo`);
each host sets its peer certificate on every torrent it adds, which is added paused so that
no announce or connection goes out before the certificate is set (:class:`PeerTLS`).

A session with ``p2p.tls`` takes only torrents rooted at its own CA: a torrent without
``ssl-cert`` would send pieces in the clear to anyone, and one rooted elsewhere would make
libtorrent trust whichever peers that CA vouches for. A session without it refuses SSL
torrents, which it could not join (no certificate), with an error that says so.

The files are checked when the session starts (:func:`check_files`), so a wrong file fails
the component's start with its key, not the first download (not when the config is loaded:
the devcluster checks its configs before it makes the certificates). The key is opened there,
with its passphrase (never logged), and handed to libtorrent in memory with the DH parameters
(``set_ssl_certificate_buffer``): no file is written, so none can be left behind by a crash or a
cancelled start, and libtorrent never asks for a passphrase on the terminal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import libtorrent as lt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from kraken.http.tls import read_passphrase, signed_directly_by
from kraken.p2p.config import P2PTLSConfig

#: RFC 7919's ffdhe2048 group. libtorrent posts a torrent error when a torrent's DH parameters
#: are missing or empty, although TLS 1.3 and ECDHE never use them; a fixed standard group costs
#: nothing to load, where generating parameters takes seconds.
FFDHE2048_PEM = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def _first_cert(path: str, key: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except OSError as e:
        raise ValueError(f"p2p.tls.{key} {path}: {e.strerror or e}") from None
    except ValueError:
        raise ValueError(f"p2p.tls.{key} {path}: no PEM certificate") from None


def load_root(path: str) -> x509.Certificate:
    """The first certificate of ``path``, which must be self-signed (libtorrent trusts only
    that one, and accepts no chain above it)."""
    root = _first_cert(path, "ca")
    if not signed_directly_by(root, root):
        raise ValueError(f"p2p.tls.ca {path}: the first certificate is not self-signed (libtorrent's SSL "
                         "torrents need the root CA that signs the peer certificates directly)")
    return root


def root_pem(root: x509.Certificate) -> str:
    """The CA as embedded in a torrent: re-encoded, so origins reading the same CA from files
    laid out differently still generate the same bytes and info-hash."""
    return root.public_bytes(serialization.Encoding.PEM).decode()


def _passphrase(config: P2PTLSConfig) -> bytes | None:
    try:
        return read_passphrase(config.passphrase)
    except OSError as e:
        raise ValueError(f"p2p.tls.passphrase {config.passphrase.path}: {e.strerror or e}") from None


def check_files(config: P2PTLSConfig) -> tuple[x509.Certificate, x509.Certificate, PrivateKeyTypes]:
    """The CA is self-signed, the certificate is signed directly by it and names ``*``, and
    the key opens (with the passphrase) and belongs to the certificate; returns the three."""
    root = load_root(config.ca.path)
    cert = _first_cert(config.cert.path, "cert")
    if not signed_directly_by(cert, root):
        raise ValueError(f"p2p.tls.cert {config.cert.path}: not signed directly by p2p.tls.ca {config.ca.path}")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if "*" not in dns:
        raise ValueError(f"p2p.tls.cert {config.cert.path}: needs a SAN DNS:* (torrents are named after "
                         "digests; libtorrent accepts a peer whose certificate names the torrent or *)")
    try:
        key = serialization.load_pem_private_key(Path(config.key.path).read_bytes(), _passphrase(config))
    except OSError as e:
        raise ValueError(f"p2p.tls.key {config.key.path}: {e.strerror or e}") from None
    except (ValueError, TypeError):
        raise ValueError(f"p2p.tls.key {config.key.path}: not a PEM private key, or the passphrase does not "
                         "open it") from None
    if key.public_key() != cert.public_key():
        raise ValueError(f"p2p.tls.key {config.key.path}: not the key of p2p.tls.cert {config.cert.path}")
    return root, cert, key


@dataclass(frozen=True)
class PeerTLS:
    """A session's peer certificate and CA, loaded once (:meth:`load`, a worker thread)."""

    root: x509.Certificate
    cert_pem: str
    #: Unencrypted (the buffer API takes no passphrase): kept in this process's memory only, as
    #: OpenSSL keeps it anyway, and out of ``repr``.
    key_pem: str = field(repr=False)

    @classmethod
    def load(cls, config: P2PTLSConfig) -> PeerTLS:
        """Check the files (:func:`check_files`) and keep what libtorrent is given."""
        if not config.ca.path:
            raise ValueError("p2p.tls.ca is not set (the component's config sets it from tls.cas)")
        root, cert, key = check_files(config)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cls(root, cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode())

    @property
    def root_pem(self) -> str:
        return root_pem(self.root)

    def check(self, ti: lt.torrent_info) -> None:
        """ValueError unless the torrent is an SSL torrent rooted at this session's CA."""
        embedded = ti.ssl_cert()
        if not embedded:
            raise ValueError("the metainfo is not an SSL torrent (no ssl-cert) and p2p.tls is on: refusing piece "
                             "traffic in the clear (are the origins running without p2p.tls?)")
        try:
            theirs = x509.load_pem_x509_certificate(embedded.encode())
        except ValueError:
            raise ValueError("the metainfo's ssl-cert is not a PEM certificate") from None
        if theirs != self.root:
            raise ValueError(f"the metainfo's ssl-cert ({theirs.subject.rfc4514_string()}) is not p2p.tls.ca "
                             f"({self.root.subject.rfc4514_string()}): every origin must embed the cluster's CA")

    def apply(self, handle: lt.torrent_handle) -> None:
        """Give a torrent (added paused) this host's certificate."""
        handle.set_ssl_certificate_buffer(self.cert_pem, self.key_pem, FFDHE2048_PEM)


def refuse_ssl_torrent(ti: lt.torrent_info) -> None:
    """For a session without ``p2p.tls``: ValueError if the torrent is an SSL torrent."""
    if ti.ssl_cert():
        raise ValueError("the metainfo is an SSL torrent (the origins run with p2p.tls) and this host has no "
                         "p2p.tls: it cannot join the swarm (configure p2p.tls with a cluster peer certificate)")
