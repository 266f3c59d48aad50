"""The YAML sections of Kraken's HTTP stack that every component shares: ``http:`` (limits of
its servers), ``http_client:`` (how it calls other components and storage) and ``tls:``
(Kraken's shape: the CAs, the server certificate a component serves HTTPS with and the client
certificate it presents to the others; the SSL contexts are built in :mod:`kraken.http.tls`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kraken.config import ByteSize, Duration


@dataclass
class HttpServerConfig:
    """Limits of every HTTP server of a component (the ``http:`` section), so a client that
    stalls or floods cannot pin connections, descriptors and memory forever.

    The defaults follow what production HTTP servers ship with (nginx's
    ``client_header_timeout``/``client_body_timeout``/``send_timeout`` are 60s, Go servers
    commonly use a 10s header timeout): a real client sends its headers in one packet, and a
    body or a download that moves no byte for a minute is stalled, not slow. A response
    pauses the write timeout only while the peer reads; a body pauses the body timeout while
    the server itself stopped reading (flow control), so a slow upstream never times out a
    client. ``max_connections`` stays below a typical 4096-descriptor limit with room for
    files, upstream connections and P2P sockets.
    """

    #: A connection must deliver a request's complete headers within this time of its first
    #: byte (of its opening, for the first request).
    header_timeout: Duration = 10.0
    #: A request body that receives no byte for this long (while the server reads) is dropped.
    body_timeout: Duration = 60.0
    #: A response the peer takes no byte of for this long is dropped.
    write_timeout: Duration = 60.0
    #: A keep-alive connection with no request for this long is closed.
    idle_timeout: Duration = 60.0
    #: Open connections per listening server; a connection beyond is closed at once.
    max_connections: int = 1024

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "write_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")


@dataclass
class HttpClientConfig:
    """Timeouts, retries and connection limits of a component's HTTP client (``http_client:``).

    Retries apply only where they are safe: connection failures and 502/503/504 answers, for
    requests whose body can be sent again; the pause before retry ``n`` (from 0) is
    ``min(backoff_max, backoff * 2**n)``, jittered by +-50%.
    """

    #: Time to open a TCP connection.
    connect_timeout: Duration = 5.0
    #: Longest wait for the next byte of a response (a blob hashed before its answer is slow).
    read_timeout: Duration = 60.0
    #: Whole-request limit, body included; none by default (blobs may be large).
    total_timeout: Duration | None = None
    #: Further attempts after a failed one (replayable requests only).
    retries: int = 3
    #: First pause between attempts, doubled each time up to ``backoff_max``.
    backoff: Duration = 0.2
    backoff_max: Duration = 3.0
    #: Connections open at once (aiohttp's default is 100). A relay holds one upstream
    #: connection per client reading a blob, so this matches a server's default
    #: ``http.max_connections``: with fewer, slow readers would make every other read queue.
    max_connections: int = 1024
    #: Bytes read ahead of a response's reader (aiohttp's default is 64 KiB, about 0.5 MiB
    #: per stalled relayed stream with the socket's reads on top). Smaller costs no measurable
    #: throughput (a 500 MiB GET through the proxy: 1.08 s vs 1.13 s) and keeps 200 stalled
    #: readers of a blob relayed by the proxy within 150 MiB.
    read_buffer: ByteSize = 16 << 10

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("connect_timeout and read_timeout must be > 0")
        if self.total_timeout is not None and self.total_timeout <= 0:
            raise ValueError("total_timeout must be > 0 (or absent)")
        if self.retries < 0 or self.backoff < 0 or self.backoff_max < 0:
            raise ValueError("retries, backoff and backoff_max must be >= 0")
        if self.max_connections < 1 or self.read_buffer < 1:
            raise ValueError("max_connections and read_buffer must be >= 1")


@dataclass
class SecretFile:
    """A file holding a secret (a certificate, a key, a passphrase), as Kraken names one."""

    path: str = ""


@dataclass
class X509Pair:
    """A certificate and its key (``tls.client``, ``tls.server``); ``passphrase`` names the
    file holding the key's passphrase when the key is encrypted."""

    disabled: bool = False
    cert: SecretFile = field(default_factory=SecretFile)
    key: SecretFile = field(default_factory=SecretFile)
    passphrase: SecretFile = field(default_factory=SecretFile)

    def configured(self) -> bool:
        """A certificate is given and not disabled."""
        return not self.disabled and bool(self.cert.path)

    def check(self, which: str) -> None:
        if self.disabled:
            return
        if bool(self.cert.path) != bool(self.key.path):
            raise ValueError(f"tls.{which}: cert and key go together")
        if self.passphrase.path and not self.key.path:
            raise ValueError(f"tls.{which}: a passphrase without a key")


@dataclass
class TLSConfig:
    """Kraken's ``tls:`` section: the server name clients verify, the CAs, and the client and
    server certificates.

    - ``server`` with a certificate: the component serves HTTPS. With ``cas`` as well, the
      internal components (origin, build-index, testfs, the tracker but for its announces)
      require a client certificate those CAs signed.
    - ``cas`` (and ``client`` not disabled): every call to another Kraken component is HTTPS,
      trusting only ``cas`` (never the system bundle), checking the server's certificate
      against ``name`` (or the host dialled when ``name`` is empty), and presenting the
      ``client`` certificate when one is given.
    """

    name: str = ""
    cas: list[SecretFile] = field(default_factory=list)
    client: X509Pair = field(default_factory=X509Pair)
    server: X509Pair = field(default_factory=X509Pair)

    def __post_init__(self) -> None:
        self.client.check("client")
        self.server.check("server")
        if any(not ca.path for ca in self.cas):
            raise ValueError("tls.cas: every entry needs a path")
        if self.client.configured() and not self.cas:
            # A client certificate with no CA to verify the server by would send it to anyone.
            raise ValueError("tls.client: a client certificate needs tls.cas to verify servers")

    @property
    def serves(self) -> bool:
        """The component serves HTTPS."""
        return self.server.configured()

    @property
    def calls(self) -> bool:
        """Calls to other Kraken components are HTTPS."""
        return bool(self.cas) and not self.client.disabled

    @property
    def verifies_clients(self) -> bool:
        """A server that can verify client certificates (it serves HTTPS and has CAs)."""
        return self.serves and bool(self.cas)
