"""What every start checks before it creates anything, in either mode: the plan (no two
components on one port, every config loads) and the ports (free, else who holds them and the
one command that frees them).

Both modes check the same plan: the native processes, which the Docker mode's containers run
too (the herd's container runs the herd's processes, each agent's container one agent), so
their ports and configs are the containers' as well.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kraken.devcluster import configcheck
from kraken.devcluster.advice import BusyPort, busy_ports_message
from kraken.devcluster.dockercli import running_containers
from kraken.devcluster.net import port_free
from kraken.devcluster.plan import shared_ports
from kraken.devcluster.procfs import port_holder
from kraken.devcluster.supervise import Process

#: (who, port): ``agent-one (P2P)``, 16001.
Owners = Sequence[tuple[str, int]]


def check_plan(owners: Owners, configs: Sequence[Process]) -> str | None:
    """Why the plan cannot start, whatever the ports' state: two of ``owners`` on one port, or
    a config of ``configs`` a component would refuse (naming the user's file and key); None
    when it can."""
    shared = shared_ports(owners)
    if shared:
        return ("devcluster: not started: " + "; ".join(shared) +
                " (the ports come from examples/devcluster/*_param.sh and the environment)")
    problems = configcheck.check(configs)
    if problems:
        return "devcluster: not started: config error\n" + "\n".join(f"  {p}" for p in problems)
    return None


def busy_ports(owners: Owners, workdir: Path,
               kraken_containers: Callable[[], Sequence[str]] = running_containers) -> str | None:
    """Who holds the ports of ``owners`` and how to free them; None when all are free.

    The Docker devcluster's containers are asked for whenever a port is busy: their processes
    run as another user (uid 10001), whose sockets a non-root user cannot trace to a process,
    so a holder that cannot be seen may well be them.
    """
    busy = [BusyPort(who, port, port_holder(port)) for who, port in owners if not port_free(port)]
    if not busy:
        return None
    return busy_ports_message(busy, workdir, kraken_containers())


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """Where a plan's config overlays go while they are checked: a refused start must leave
    nothing on disk, so they are written to the work dir only once the checks pass."""
    with tempfile.TemporaryDirectory(prefix="kraken-devcluster-check-") as tmp:
        yield Path(tmp)
