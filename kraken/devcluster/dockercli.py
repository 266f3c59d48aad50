"""The docker CLI as the devcluster uses it: run a command, does a daemon answer, which of the
Docker devcluster's containers run. Standard library only, and apart from the Docker mode so
that the checks every start runs (``checks``) can ask which containers run without importing
the mode that starts them."""
from __future__ import annotations

import shutil
import subprocess

#: Marks every container the Docker mode starts, so a stop finds them all.
LABEL = "org.kraken.devcluster"


def docker(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI (``DOCKER_HOST`` as in the environment); never raises on its exit code."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def daemon_answers(timeout: float = 5.0) -> bool:
    """A Docker daemon answers the docker CLI (how ``make devcluster`` picks its mode)."""
    if shutil.which("docker") is None:
        return False
    try:
        return docker("info", "--format", "{{.ServerVersion}}", timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def running_containers() -> list[str]:
    """The Docker devcluster's running containers (none when no daemon answers)."""
    if shutil.which("docker") is None:
        return []
    try:
        r = docker("ps", "--filter", f"label={LABEL}", "--format", "{{.Names}}", timeout=10)
    except subprocess.TimeoutExpired:
        return []
    return sorted(r.stdout.split()) if r.returncode == 0 else []
