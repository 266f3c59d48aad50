"""What to tell a user whose devcluster cannot start because its ports are taken: who holds
them (this devcluster in the other mode, another devcluster, another process) and the one
command that frees them."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kraken.devcluster.procfs import Holder
from kraken.devcluster.state import stop_hint


@dataclass(frozen=True)
class BusyPort:
    """A port a process (or container) of the plan needs and another process holds."""

    who: str
    port: int
    holder: Holder | None


def holder_workdir(cmdline: str) -> Path | None:
    """The devcluster work dir of a ``python -m kraken ... --config DIR/config/X.yaml`` process."""
    args = cmdline.split()
    if "kraken" not in args or "--config" not in args[:-1]:
        return None
    config = Path(args[args.index("--config") + 1])
    return config.parent.parent if config.parent.name == "config" else None


def _ports(items: Sequence[BusyPort]) -> str:
    return ", ".join(str(b.port) for b in items)


def _docker_side(holder: Holder) -> bool:
    """``holder`` is a container's process, or the docker-proxy that publishes a container's
    port on the host (bridge networking)."""
    program = holder.cmdline.split(maxsplit=1)[0] if holder.cmdline else ""
    return holder.container or Path(program).name == "docker-proxy"


def busy_ports_message(busy: Sequence[BusyPort], workdir: Path, kraken_containers: Sequence[str] = ()) -> str:
    """One line per process holding some of the ports, then who it is and how to free them.

    While ``kraken_containers`` (the Docker devcluster's) run, a port held by a container's
    process, by docker-proxy, or by a process this user cannot see (the containers run as uid
    10001, whose sockets only root can trace) is the Docker devcluster's: ``make docker_stop``
    stops it (its processes' work dirs are paths inside the containers, so ``make
    devcluster-stop`` with them would find nothing). A ``python -m kraken`` process on this
    host with a devcluster overlay is a native devcluster: ``make devcluster-stop`` with its
    work dir.
    """
    lines = []
    by_holder: dict[Holder | None, list[BusyPort]] = {}
    for b in busy:
        by_holder.setdefault(b.holder, []).append(b)
    for h, items in by_holder.items():
        who = (f"pid {h.pid} ({h.cmdline[:160]}){' in a container' if h.container else ''}" if h
               else "another process")
        ports = ", ".join(f"{b.port} ({b.who})" for b in items)
        lines.append(f"devcluster: {'port' if len(items) == 1 else 'ports'} {ports} "
                     f"{'is' if len(items) == 1 else 'are'} already in use by {who}")
    lines.append("devcluster: not started. To free the port(s):")
    docker_side = [b for b in busy if (b.holder is None and kraken_containers)
                   or (b.holder is not None and _docker_side(b.holder))]
    native: dict[Path, list[BusyPort]] = {}
    others: dict[int, list[BusyPort]] = {}
    unknown = [b for b in busy if b.holder is None and not kraken_containers]
    for b in busy:
        if b.holder is None or _docker_side(b.holder):
            continue
        d = holder_workdir(b.holder.cmdline)
        if d is not None:
            native.setdefault(d, []).append(b)
        else:
            others.setdefault(b.holder.pid, []).append(b)
    if docker_side and kraken_containers:
        lines.append(f"  - the Docker devcluster holds {_ports(docker_side)} (containers "
                     f"{', '.join(kraken_containers)}): stop it with `make docker_stop`")
    elif docker_side:
        lines.append(f"  - a container holds {_ports(docker_side)}: find it with `docker ps`, then `docker stop` it")
    for d, items in native.items():
        lines.append(f"  - a native devcluster (work dir {d}) holds {_ports(items)}: stop it with {stop_hint(d)}")
    for pid, items in others.items():
        lines.append(f"  - pid {pid} holds {_ports(items)}: stop it (kill {pid})")
    if unknown:
        lines.append(f"  - {_ports(unknown)}: if an earlier devcluster holds it, stop it with {stop_hint(workdir)}; "
                     f"else see who: ss -ltnp 'sport = :{unknown[0].port}'")
    if others or unknown:
        lines.append("  - to move a component instead, change its port in examples/devcluster/*_param.sh")
    return "\n".join(lines)
