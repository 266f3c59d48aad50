"""The YAML sections of Kraken's HTTP stack that every component shares: ``http:`` (limits of
its servers), ``http_client:`` (how it calls other components and storage) and ``tls:``
(Kraken's shape, parsed now so configs have their place; turning it on is refused until TLS
is implemented).
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
    """A certificate and its key (``tls.client``, ``tls.server``)."""

    disabled: bool = False
    cert: SecretFile = field(default_factory=SecretFile)
    key: SecretFile = field(default_factory=SecretFile)
    passphrase: SecretFile = field(default_factory=SecretFile)

    def configured(self) -> bool:
        return not self.disabled and bool(self.cert.path or self.key.path or self.passphrase.path)


@dataclass
class TLSConfig:
    """Kraken's ``tls:`` section: the server name to verify, the CAs, and the client and
    server certificates. Parsed so every component's config has its place; any certificate
    or CA given is refused at start, since nothing serves or verifies TLS yet (plain HTTP
    with a TLS section would silently send what the operator meant to protect)."""

    name: str = ""
    cas: list[SecretFile] = field(default_factory=list)
    client: X509Pair = field(default_factory=X509Pair)
    server: X509Pair = field(default_factory=X509Pair)

    def __post_init__(self) -> None:
        if self.cas or self.client.configured() or self.server.configured():
            raise ValueError("tls is not supported yet: remove the tls certificates and CAs")
