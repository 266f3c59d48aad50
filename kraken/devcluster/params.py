"""The devcluster's parameters: where its files are, and the ports of the parameter files
``examples/devcluster/*_param.sh`` (one for the herd, one per agent).

The files are shell (the containers' entrypoints source them too); each value reads
``${VAR:-default}`` so the environment overrides it. The herd's names are unique; an agent's
file reads its own names first (``AGENT_ONE_REGISTRY_PORT`` in ``agent_one_param.sh``), then
the generic ones (``AGENT_REGISTRY_PORT``), which a single agent (a container, a multi-host
agent) is given. Two agents started together would both read a generic name, so
:func:`ambiguous_overrides` refuses it then.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

from kraken.devcluster.net import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
#: Where ``config/`` and ``examples/`` are: the repository, or ``KRAKEN_ROOT`` where the
#: project is installed without its source tree (the images put them in /etc/kraken).
FILES_ROOT = Path(os.environ.get("KRAKEN_ROOT") or REPO_ROOT)
CONFIG_ROOT = FILES_ROOT / "config"
EXAMPLES_ROOT = FILES_ROOT / "examples"
#: The devcluster's parameter files (ports a user may change): one for the herd, one per agent.
DEVCLUSTER_PARAMS = EXAMPLES_ROOT / "devcluster"
DEFAULT_WORKDIR = Path("/tmp/kraken-devcluster")


class ParamsError(ValueError):
    """A parameter file (``examples/devcluster/*_param.sh``) is unreadable or lacks a port."""


def load_params(path: Path) -> dict[str, str]:
    """The variables a ``*_param.sh`` file sets, read by sourcing it with bash, so
    ``${VAR:-default}`` lets the environment override a value."""
    # The environment comes back through this Python as JSON: macOS's env(1) has no -0.
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    r = subprocess.run(["bash", "-c", 'set -a; . "$1" >&2 && exec "$2" -c "$3"', "params", str(path),
                        sys.executable, dump], capture_output=True, timeout=10)
    if r.returncode != 0:
        raise ParamsError(f"{path}: {r.stderr.decode(errors='replace').strip() or 'cannot be read'}")
    return dict(json.loads(r.stdout))


def param_port(params: dict[str, str], name: str, source: Path) -> int:
    value = params.get(name, "")
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ParamsError(f"{source}: {name}={value!r} is not a port")
    return int(value)


class PortParams:
    """Ports named by a parameter file's variables: ``PARAMS`` maps each variable to a field.
    Read from a file (``from_params``), and handed to a container's entrypoint as the same
    variables (``params``)."""

    PARAMS: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_params(cls, path: Path) -> Self:
        params = load_params(path)
        return cls(**{field_name: param_port(params, var, path) for var, field_name in cls.PARAMS.items()})

    def params(self) -> dict[str, str]:
        return {var: str(getattr(self, field_name)) for var, field_name in self.PARAMS.items()}


#: Port distance between the origins (and trackers) of ``--origins``/``--trackers``.
FLEET_STEP = 10


@dataclass
class HerdPorts(PortParams):
    #: ``herd_param.sh``'s variables (the seed's names).
    PARAMS: ClassVar[dict[str, str]] = {
        "TESTFS_PORT": "testfs", "REDIS_PORT": "redis", "PROXY_PORT": "proxy", "ORIGIN_PEER_PORT": "origin_p2p",
        "ORIGIN_SERVER_PORT": "origin", "TRACKER_PORT": "tracker", "BUILD_INDEX_PORT": "build_index"}

    testfs: int = 14000
    proxy: int = 15000
    origin: int = 15002
    build_index: int = 15004
    tracker: int = 15003
    #: Where ``origin`` seeds (BitTorrent); the tracker's ``origin_p2p`` maps it.
    origin_p2p: int = 15001
    #: Further origins on the same ring as ``origin`` (which stays the first, and the only one
    #: ``make devcluster`` runs); tests of routing and replication across origins use them.
    extra_origins: list[int] = field(default_factory=list)
    #: The P2P ports of ``extra_origins``, in order; free ports are picked for any not given.
    extra_origins_p2p: list[int] = field(default_factory=list)
    #: The herd's redis-server (the tracker's peer store), when it runs one.
    redis: int = 14001
    #: Further trackers beside ``tracker`` (``--trackers``), sharing the redis peer store.
    extra_trackers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = len(self.extra_origins) - len(self.extra_origins_p2p)
        self.extra_origins_p2p = [*self.extra_origins_p2p, *(free_port() for _ in range(missing))]

    @classmethod
    def free(cls, origins: int = 1, trackers: int = 1) -> HerdPorts:
        """Every port free (tests run herds beside each other and beside ``make devcluster``)."""
        return cls(testfs=free_port(), proxy=free_port(), origin=free_port(), build_index=free_port(),
                   tracker=free_port(), origin_p2p=free_port(),
                   extra_origins=[free_port() for _ in range(origins - 1)], redis=free_port(),
                   extra_trackers=[free_port() for _ in range(trackers - 1)])

    @property
    def origins(self) -> list[int]:
        return [self.origin, *self.extra_origins]

    @property
    def trackers(self) -> list[int]:
        return [self.tracker, *self.extra_trackers]

    def add_fleet(self, origins: int, trackers: int) -> None:
        """``--origins``/``--trackers``: the further ones on the first's ports plus 10, 20, ...
        (derived, not picked: an agent host given the same flags finds the same ports)."""
        self.extra_origins = [self.origin + FLEET_STEP * i for i in range(1, origins)]
        self.extra_origins_p2p = [self.origin_p2p + FLEET_STEP * i for i in range(1, origins)]
        self.extra_trackers = [self.tracker + FLEET_STEP * i for i in range(1, trackers)]

    @property
    def origins_p2p(self) -> list[int]:
        return [self.origin_p2p, *self.extra_origins_p2p[:len(self.extra_origins)]]


@dataclass
class AgentPorts(PortParams):
    """An agent's three ports: its registry (``docker pull`` from it), P2P and agent server."""

    #: ``agent_*_param.sh``'s variables.
    PARAMS: ClassVar[dict[str, str]] = {
        "AGENT_REGISTRY_PORT": "registry", "AGENT_PEER_PORT": "p2p", "AGENT_SERVER_PORT": "server"}

    registry: int
    p2p: int
    server: int

    @classmethod
    def free(cls) -> AgentPorts:
        return cls(registry=free_port(), p2p=free_port(), server=free_port())


def agent_name(params: Path) -> str:
    """``agent_two_param.sh`` -> ``agent-two``."""
    return params.name.removesuffix(".sh").removesuffix("_param").replace("_", "-")


def agent_variable(params: Path, generic: str) -> str:
    """An agent's own name for a generic variable: ``AGENT_REGISTRY_PORT`` of
    ``agent_two_param.sh`` is ``AGENT_TWO_REGISTRY_PORT``."""
    prefix = agent_name(params).upper().replace("-", "_")
    return f"{prefix}_{generic.removeprefix('AGENT_')}"


def ambiguous_overrides(agent_files: Sequence[Path], environ: Mapping[str, str]) -> str | None:
    """Why the environment cannot be applied, when several agents would read one generic
    variable from it (``AGENT_REGISTRY_PORT=18000`` would put every agent on 18000); else None."""
    if len(agent_files) < 2:
        return None
    generic = [var for var in AgentPorts.PARAMS if var in environ]
    if not generic:
        return None
    var = generic[0]
    own = " or ".join(f"{agent_variable(f, var)}={environ[var]}" for f in agent_files)
    names = ", ".join(agent_name(f) for f in agent_files)
    return (f"{', '.join(f'{v}={environ[v]}' for v in generic)} in the environment would apply to every agent "
            f"({names}), and two agents cannot share a port. Name one agent: {own}")
