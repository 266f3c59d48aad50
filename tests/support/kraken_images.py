"""The Kraken images, built once per test session the way an offline host builds them.

``make base-image`` (Debian bookworm from Debian packages, debootstrap) and then ``make images``
on it, in the suite's private dockerd. Tests that run the images (the Docker devcluster, the
Docker mode of the multi-host deployment) share the build; ``save_images`` copies them into
another daemon (one in a test host's network namespace).
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from kraken.devcluster import REPO_ROOT
from tests.support.docker import Dockerd
from tests.support.process import client_env

IMAGES = ("kraken-herd:dev", "kraken-agent:dev")


def make(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``make ARGS`` in the repository; fails the test with its output unless it exits 0."""
    r = subprocess.run(["make", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"make {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="session")
def docker_env(dockerd: Dockerd) -> dict[str, str]:
    """What a user's shell has: the docker CLI pointed at the suite's daemon, no mode forced."""
    if os.geteuid() != 0:
        pytest.skip("make base-image runs debootstrap, which needs root")
    env = client_env({"DOCKER_HOST": dockerd.host, "DOCKER_CONFIG": str(dockerd.docker_config_dir)})
    env.pop("KRAKEN_DEVCLUSTER", None)
    env.pop("KRAKEN_DOCKER_NETWORK", None)
    return env


@pytest.fixture(scope="session")
def kraken_images(docker_env: dict[str, str]) -> Iterator[None]:
    """``make base-image`` then ``make images`` on it, as an offline host does.

    Only the host reaches out, to the package registries: debootstrap to the Debian archive apt
    uses, pip for the wheels (the suite's proxy trap, which keeps clients off the network, would
    stop them). Inside the image builds, nothing is fetched."""
    host_env = {k: v for k, v in docker_env.items() if k.lower() not in ("http_proxy", "https_proxy")}
    out = make(host_env, "base-image").stdout
    assert "built kraken-base:bookworm" in out, out
    out = make(host_env, "images", "BASE_IMAGE=kraken-base:bookworm").stdout
    assert "built kraken-herd:dev and kraken-agent:dev" in out, out
    yield


def save_images(source: Dockerd, target: Dockerd) -> None:
    """Copy the Kraken images from ``source`` into ``target`` (docker save | docker load)."""
    save = subprocess.Popen([source.docker_binary, "-H", source.host, "save", *IMAGES],
                            stdout=subprocess.PIPE, env=client_env())
    try:
        load = subprocess.run([target.docker_binary, "-H", target.host, "load", "-q"], stdin=save.stdout,
                              capture_output=True, text=True, timeout=300, env=client_env())
    finally:
        assert save.stdout is not None
        save.stdout.close()
        save.wait(60)
    assert save.returncode == 0 and load.returncode == 0, load.stderr
