"""Run a set of Kraken components: the native ``make devcluster``, its Docker mode, one host's
share of a multi-host cluster, the inside of the Docker images, and the clusters that
integration tests and benchmarks start.

The modules, each importing only those listed before it:

* ``net``, ``procfs``: ports and probes; who listens on a port (standard library only).
* ``dockercli``: the docker CLI; which of the Docker devcluster's containers run.
* ``params``: where the files are, and the ports of ``examples/devcluster/*_param.sh``.
* ``supervise``: :class:`Process` and :class:`Supervisor` (start, wait for health, stop).
* ``plan``: the topology: the herd's and the agents' processes and their config overlays.
* ``state``, ``advice``: ``<workdir>/devcluster.json``; what to say when a port is taken.
* ``configcheck``: every config checked before anything starts, errors naming the user's file.
* ``checks``: what both modes check before they create anything (the plan, the ports).
* ``docker``: Docker mode (containers); ``native``: local processes, supervised.
* ``__main__``: ``python -m kraken.devcluster start|stop|health``.

``stop`` and ``health`` need only the standard library (``make devcluster-stop`` runs with any
python3), so nothing here imports the project's dependencies at module level.
"""
from kraken.devcluster.net import free_port, http_ok, port_free
from kraken.devcluster.params import CONFIG_ROOT, REPO_ROOT, AgentPorts, HerdPorts
from kraken.devcluster.plan import agent_processes, herd_processes, write_overlay
from kraken.devcluster.supervise import Process, StartupError, Supervisor

__all__ = [
    "CONFIG_ROOT", "REPO_ROOT", "AgentPorts", "HerdPorts", "Process", "StartupError", "Supervisor",
    "agent_processes", "free_port", "herd_processes", "http_ok", "port_free", "write_overlay",
]
