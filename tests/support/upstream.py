"""Upstream registries for the pull-through backends: Debian's distribution, anonymous, with
htpasswd, or with token auth (tests/support/tokenserver.py).

An upstream with auth shares its storage with an anonymous "seeder" registry on another port,
so tests put blobs and images into it with the plain helpers (registry_http, skopeo) and the
backend under test reads them through the authenticated one.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.support.distribution import DistributionRegistry
from tests.support.tokenserver import SigningKey, TokenIssuer, TokenServer, TokenUser, write_htpasswd

Mode = Literal["anonymous", "htpasswd", "token"]
USER, PASSWORD = "puller", "pull-secret"
SERVICE, ISSUER = "upstream-registry", "upstream-token-issuer"


@dataclass
class Upstream:
    mode: Mode
    registry: DistributionRegistry
    #: Anonymous, same storage: where tests push.
    seeder: DistributionRegistry
    tokens: TokenServer | None = None

    @property
    def addr(self) -> str:
        return self.registry.host

    def backend_section(self, *, username: str = USER, password: str = PASSWORD) -> dict[str, Any]:
        """The ``registry_blob``/``registry_tag`` config section reaching this upstream."""
        security: dict[str, Any] = {"tls": {"client": {"disabled": True}}}
        if self.mode != "anonymous":
            security["basic"] = {"username": username, "password": password}
        return {"address": self.addr, "timeout": "20s", "security": security}


@contextmanager
def start_upstream(workdir: Path, mode: Mode) -> Iterator[Upstream]:
    seeder = DistributionRegistry(workdir / "seeder")
    served: DistributionRegistry | None = None
    tokens: TokenServer | None = None
    seeder.start()
    try:
        if mode == "anonymous":
            yield Upstream(mode, seeder, seeder)
            return
        auth: dict[str, dict[str, str]]
        if mode == "htpasswd":
            path = write_htpasswd(workdir / "htpasswd", {USER: PASSWORD})
            auth = {"htpasswd": {"realm": "upstream", "path": str(path)}}
        else:
            tokens = TokenServer(TokenIssuer(ISSUER, SERVICE, SigningKey.generate()),
                                 {USER: TokenUser(PASSWORD, {"*": ["pull"]})}).start()
            bundle = workdir / "bundle.pem"
            bundle.write_bytes(tokens.issuer.signer.pem)
            auth = {"token": {"realm": tokens.realm, "service": SERVICE, "issuer": ISSUER,
                              "rootcertbundle": str(bundle)}}
        root = workdir / "served"
        root.mkdir(parents=True)
        (root / "data").symlink_to(seeder.data_dir)
        served = DistributionRegistry(root, auth=auth).start()
        yield Upstream(mode, served, seeder, tokens)
    finally:
        if served is not None:
            served.stop()
        if tokens is not None:
            tokens.stop()
        seeder.stop()
