"""Session fixtures for the real clients: one daemon of each kind per test session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support.containerd import Containerd
from tests.support.distribution import DistributionRegistry
from tests.support.docker import Dockerd
from tests.support.podman import Podman


def _skip_unless(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (run scripts/install-system-deps.sh)")


@pytest.fixture(scope="session")
def distribution_registry() -> Iterator[DistributionRegistry]:
    """A fresh distribution registry on 127.0.0.1:<free port> for the session."""
    _skip_unless("docker-registry")
    reg = DistributionRegistry()
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """One dockerd for the session (127.0.0.0/8 and 10.200.0.0/24 are insecure).

    Skips only when the dockerd binary is absent; a daemon that fails to start
    is an error.  Tests that need ``registry-mirrors`` start their own
    ``Dockerd`` because mirrors are fixed at daemon start.
    """
    _skip_unless("dockerd")
    d = Dockerd(insecure_registries=["10.200.0.0/24"])
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    """A standalone containerd for the session (use ``containerd.ctr()`` for a client)."""
    _skip_unless("containerd")
    _skip_unless("ctr")
    c = Containerd()
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    """A podman with private storage and blob-info cache for the session (TLS verification off by default)."""
    _skip_unless("podman")
    p = Podman()
    try:
        yield p
    finally:
        p.close()
