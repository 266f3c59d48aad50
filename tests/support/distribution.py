"""The distribution registry (``docker-registry``): the baseline "central registry"."""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kraken.devcluster import free_port
from tests.support.process import (
    BackgroundProcess,
    client_env,
    log_tail,
    private_tmpdir,
    remove_tree,
    require_binary,
)
from tests.support.registry_http import fetch_blob, fetch_manifest, http_request
from tests.support.waiting import wait_until


@dataclass(frozen=True)
class DistributionTLS:
    """HTTPS for the registry (``http.tls``): its certificate and unencrypted key (distribution
    takes no passphrase), and the CA that signed them (for the readiness check)."""

    cert: str
    key: str
    ca: str

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)


class DistributionRegistry:
    """Debian's ``docker-registry`` (distribution 2.8) with a private config.

    Why: it is the reference implementation of the registry API, so it is the
    baseline for benchmarks and the sanity target for the client helpers.
    The packaged /etc/docker/registry/config.yml enables htpasswd auth and
    listens on all interfaces, so we always write our own config.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        port: int | None = None,
        bind_host: str = "127.0.0.1",
        relative_urls: bool = False,
        proxy_remote_url: str | None = None,
        tls: DistributionTLS | None = None,
        auth: dict[str, dict[str, str]] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._own_root = root is None
        self.root = root if root is not None else private_tmpdir("registry")
        self.bind_host = bind_host
        self.port = port
        self.relative_urls = relative_urls
        self.proxy_remote_url = proxy_remote_url
        self.tls = tls
        #: distribution's ``auth:`` section, e.g. ``{"htpasswd": {"realm": ..., "path": ...}}``
        #: or ``{"token": {"realm", "service", "issuer", "rootcertbundle"}}``.
        self.auth = auth
        self.start_timeout = start_timeout
        self.process: BackgroundProcess | None = None

    @property
    def host(self) -> str:
        """``ip:port``, as used in image references."""
        if self.port is None:
            raise RuntimeError("registry not started")
        return f"{self.bind_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _config(self, port: int) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.data_dir}",
            "  delete:",
            "    enabled: true",
            "  cache:",
            "    blobdescriptor: inmemory",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {self.bind_host}:{port}",
            f"  relativeurls: {'true' if self.relative_urls else 'false'}",
            *(["  tls:", f"    certificate: {self.tls.cert}", f"    key: {self.tls.key}"] if self.tls else []),
            "health:",
            "  storagedriver:",
            "    enabled: false",
        ]
        if self.proxy_remote_url:
            lines += ["proxy:", f"  remoteurl: {self.proxy_remote_url}"]
        for scheme, options in (self.auth or {}).items():
            lines += ["auth:", f"  {scheme}:", *(f"    {key}: {json.dumps(value)}" for key, value in options.items())]
        return "\n".join(lines) + "\n"

    def _ready(self) -> bool:
        assert self.process is not None
        try:
            if self.tls:
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                     urllib.request.HTTPSHandler(context=self.tls.context()))
                with opener.open(f"{self.url}/v2/", timeout=2) as resp:
                    return bool(resp.status == 200)
            # With auth configured, an anonymous /v2/ is refused: the registry is up.
            return http_request(f"{self.url}/v2/", timeout=2).status in ((401,) if self.auth else (200,))
        except OSError:
            return False

    def start(self) -> DistributionRegistry:
        """Start the registry and wait until ``GET /v2/`` answers 200.

        A port race (another process took the port) is retried with a new
        port, up to three times.
        """
        binary = require_binary("docker-registry")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port
        last_error: Exception | None = None
        for _attempt in range(3):
            self.port = fixed_port or free_port()
            cfg = self.root / "config.yml"
            cfg.write_text(self._config(self.port))
            self.process = BackgroundProcess([binary, "serve", cfg], log_path=self.log_path, env=client_env())
            try:
                wait_until(self._ready, self.start_timeout, message=f"docker-registry on {self.host}",
                           alive=self.process.exited, details=self.process.log)
                return self
            except (RuntimeError, TimeoutError) as exc:
                last_error = exc
                self.process.stop()
                if fixed_port:
                    break
        raise RuntimeError(f"could not start docker-registry: {last_error}")

    def stop(self) -> None:
        """Stop by PID and remove the private directory (if we created it)."""
        try:
            if self.process is not None:
                self.process.stop()
        finally:
            if self._own_root:
                remove_tree(self.root)

    def access_log(self) -> str:
        """Everything the registry logged (includes the Apache-style access log)."""
        return log_tail(self.log_path, 10_000_000)

    def catalog(self) -> list[str]:
        r = http_request(f"{self.url}/v2/_catalog")
        return list(json.loads(r.body).get("repositories", []))

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        return fetch_manifest(self.host, repo, reference)

    def get_blob(self, repo: str, digest: str) -> bytes:
        return fetch_blob(self.host, repo, digest)

    def __enter__(self) -> DistributionRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
