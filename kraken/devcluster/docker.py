"""The devcluster (and a multi-host role) as Docker containers: ``make devcluster`` when a
Docker daemon answers.

``kraken-herd`` runs the herd's processes under the devcluster supervisor
(``examples/devcluster/herd_start_processes.sh``), ``kraken-agent-one`` and
``kraken-agent-two`` one agent each, from the images ``make images`` builds
(``docker/build-images.sh``, run here when an image is missing). The ports are the ones the
parameter files give (``examples/devcluster/*_param.sh``), passed into the containers as
environment variables, so a port changed there changes everywhere.

Networking, so that every announced peer address is reachable from every container:

* ``host`` (Linux): the containers share the host's network, exactly as the native processes
  do; peers are announced as 127.0.0.1 and the host pushes and pulls on localhost.
* ``bridge`` (Docker Desktop on a Mac, where host networking does not reach the Mac): a
  user-defined network (``kraken``, ``KRAKEN_DOCKER_SUBNET``) with a fixed address per
  container; the herd announces its address there, agents announce theirs (the tracker takes
  the source address), and every port a user calls is published on the host's 127.0.0.1.

``KRAKEN_DOCKER_NETWORK=host|bridge`` overrides the choice. The containers are started
detached (``docker ps --filter name=kraken``); ``make docker_stop`` (or ``make
devcluster-stop``) removes them. Like the native mode, this is a synchronous command-line tool.

With ``--tls`` the certificates are made here, on the host, in ``<workdir>/tls/`` (for the
host's names, the containers' names and their bridge addresses), and every file but the CA's
key is mounted read-only into each container at ``/etc/kraken/tls``; the supervisor inside
gets ``--tls-dir`` there, so it writes the same ``tls:`` sections as the native mode and
probes with the same CA and client certificate.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kraken.devcluster.checks import Owners, busy_ports
from kraken.devcluster.dockercli import LABEL, daemon_answers, docker
from kraken.devcluster.net import ProbeTLS, endpoint_url, http_ok, local_address
from kraken.devcluster.params import CONFIG_ROOT, FILES_ROOT, REPO_ROOT, AgentPorts, HerdPorts
from kraken.devcluster.state import err, out, write_state

if TYPE_CHECKING:
    from kraken.devcluster.tls import DevPki

#: Where the images keep ``config/`` and ``examples/`` (their ``KRAKEN_ROOT``).
IMAGE_FILES_ROOT = PurePosixPath("/etc/kraken")
#: Where the containers see the TLS files (``--tls-dir`` of the supervisor inside).
IMAGE_TLS_DIR = IMAGE_FILES_ROOT / "tls"
#: The images' ``kraken`` group (docker/Dockerfile), which the containers' processes run in.
IMAGE_GID = 10001
NETWORK = "kraken"
NETWORK_ENV = "KRAKEN_DOCKER_NETWORK"
SUBNET_ENV = "KRAKEN_DOCKER_SUBNET"
DEFAULT_SUBNET = "172.30.77.0/24"
START_TIMEOUT = 180.0
STOP_TIMEOUT = 20


def image(role: str) -> str:
    return f"kraken-{role}:{os.environ.get('KRAKEN_IMAGE_TAG', 'dev')}"


def network_mode() -> tuple[str, str]:
    """(``host`` or ``bridge``, why)."""
    asked = os.environ.get(NETWORK_ENV, "").strip().lower()
    if asked in ("host", "bridge"):
        return asked, f"{NETWORK_ENV}={asked}"
    if asked:
        raise SystemExit(f"devcluster: {NETWORK_ENV}={asked!r}: use host or bridge")
    system = docker("info", "--format", "{{.OperatingSystem}}").stdout
    if "Docker Desktop" in system or sys.platform == "darwin":
        return "bridge", (f"Docker Desktop: a '{NETWORK}' network, ports published on 127.0.0.1 "
                          f"({NETWORK_ENV}=host to share the host's network instead)")
    return "host", f"Linux: the containers share the host's network ({NETWORK_ENV}=bridge for a network of their own)"


@dataclass
class Container:
    """One container to run: ``ports`` are the ones it listens on (free on the host for host
    networking, published for bridge), ``probe`` a URL on the host that answers when it is up."""

    name: str
    role: str
    env: dict[str, str]
    args: list[str]
    ports: list[int]
    probe: str
    ip: str | None = None
    published: list[int] = field(default_factory=list)
    #: Read-only bind mounts, host path to container path (the TLS files).
    mounts: dict[Path, PurePosixPath] = field(default_factory=dict)
    #: Supplementary groups of its processes (one that may read the TLS keys).
    groups: list[int] = field(default_factory=list)
    #: The CA and client certificate ``probe`` needs when it is HTTPS.
    tls: ProbeTLS | None = None

    def run_command(self, network: str) -> list[str]:
        cmd = ["run", "-d", "--name", self.name, "--label", f"{LABEL}={self.role}",
               "--restart", "on-failure:3", "--stop-timeout", str(STOP_TIMEOUT)]
        if network == "host":
            cmd += ["--network", "host"]
        else:
            cmd += ["--network", NETWORK, "--ip", str(self.ip)]
            for port in self.published:
                cmd += ["-p", f"127.0.0.1:{port}:{port}"]
        for key, value in self.env.items():
            cmd += ["-e", f"{key}={value}"]
        for source, target in self.mounts.items():
            cmd += ["-v", f"{source}:{target}:ro"]
        for gid in self.groups:
            cmd += ["--group-add", str(gid)]
        return [*cmd, image(self.role), *self.args]


def herd_env(ports: HerdPorts, herd_host: str) -> dict[str, str]:
    """``herd_param.sh``'s variables, as the containers' entrypoints read them."""
    return {**ports.params(), "HERD_HOST": herd_host}


def config_args(config_name: str, config_dir: Path) -> list[str]:
    """The entrypoints' ``--config-name/--config-dir``, the directory as the image holds it."""
    if config_dir == CONFIG_ROOT and config_name == "development":
        return []
    try:
        inside = IMAGE_FILES_ROOT / config_dir.relative_to(FILES_ROOT).as_posix()
    except ValueError:
        raise SystemExit(f"devcluster: {config_dir} is not in {FILES_ROOT}, so the images do not have it") from None
    return ["--config-name", config_name, "--config-dir", str(inside)]


def plan(ports: HerdPorts, agents: dict[str, AgentPorts], role: str, network: str, herd_host: str,
         config: list[str], peer_ip: str, bind_address: str = "", tls: DevPki | None = None) -> list[Container]:
    """The containers of ``role``, in start order. ``bind_address``: where the herd's servers
    listen (host networking), when not every interface. With ``tls`` each supervisor takes
    the TLS files at :data:`IMAGE_TLS_DIR` (mounted by :func:`start`), and a probe of a
    component serving HTTPS (the herd's is the proxy's, an agent's its server's) uses them."""
    subnet = ipaddress.ip_network(os.environ.get(SUBNET_ENV, DEFAULT_SUBNET))
    serving = tls.serving() if tls is not None else set()
    config = [*config, *(["--tls-dir", str(IMAGE_TLS_DIR)] if tls is not None else [])]

    def address(i: int) -> str | None:
        return str(subnet.network_address + 10 + i) if network == "bridge" else None

    def probe(component: str, host: str, port: int, path: str) -> tuple[str, ProbeTLS | None]:
        secure = tls is not None and component in serving
        return endpoint_url(host, port, path, secure=secure), tls.probe() if tls is not None and secure else None

    if network == "bridge":
        herd_host = str(address(0))
    herd = herd_env(ports, herd_host)
    containers = []
    if role in ("all", "herd"):
        herd_ports = [ports.testfs, ports.origin_p2p, ports.origin, ports.tracker, ports.build_index, ports.proxy]
        bind = ["--bind-address", bind_address] if bind_address else []
        url, probe_tls = probe("proxy", local_address(bind_address), ports.proxy, "/v2/")
        containers.append(Container("kraken-herd", "herd", herd, [*config, *bind], [*herd_ports, ports.redis],
                                    url, address(0), herd_ports, tls=probe_tls))
    if role in ("all", "agent"):
        for i, (name, agent) in enumerate(agents.items(), start=1):
            args = [*config, *(["--peer-ip", peer_ip] if peer_ip else [])]
            url, probe_tls = probe("agent", "127.0.0.1", agent.server, "/health")
            containers.append(Container(f"kraken-{name}", "agent", {**herd, **agent.params()}, args,
                                        [agent.registry, agent.p2p, agent.server], url, address(i),
                                        [agent.registry, agent.server], tls=probe_tls))
    return containers


def ensure_images(roles: set[str]) -> None:
    """Build the images (``docker/build-images.sh``) if one of ``roles`` has none yet."""
    missing = [image(r) for r in sorted(roles) if docker("image", "inspect", image(r)).returncode != 0]
    if not missing:
        return
    script = REPO_ROOT / "docker" / "build-images.sh"
    if not script.exists():
        raise SystemExit(f"devcluster: no image {', '.join(missing)}, and no {script} to build it")
    out(f"devcluster: building {', '.join(missing)} (make images)")
    if subprocess.run(["bash", str(script)], stdin=subprocess.DEVNULL).returncode != 0:
        raise SystemExit("devcluster: building the images failed (see above)")


def _state(name: str) -> str:
    """``running``, ``restarting``, ``exited``, ... or ``missing``."""
    r = docker("inspect", "-f", "{{.State.Status}}", name)
    return r.stdout.strip() if r.returncode == 0 else "missing"


def _wait_up(container: Container, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(container.name)
        if state not in ("running", "created", "restarting"):
            raise RuntimeError(f"{container.name} is {state}; its log ends:\n{_logs(container.name)}")
        if state == "running" and http_ok(container.probe, tls=container.tls):
            return
        time.sleep(0.25)
    raise RuntimeError(f"{container.name} did not answer at {container.probe} within {timeout:.0f}s; "
                       f"its log ends:\n{_logs(container.name)}")


def _logs(name: str, lines: int = 40) -> str:
    r = docker("logs", "--tail", str(lines), name)
    return (r.stdout + r.stderr).rstrip() or "(empty)"


def start(workdir: Path, ports: HerdPorts, agents: dict[str, AgentPorts], *, owners: Owners, role: str = "all",
          herd_host: str = "127.0.0.1", config_name: str = "development", config_dir: Path = CONFIG_ROOT,
          peer_ip: str = "", bind_address: str = "", tls: DevPki | None = None,
          tls_hosts: list[str] | None = None) -> int:
    """Start ``role``'s containers detached and wait until each answers; 0 when all do.

    The plan has been checked (``checks.check_plan``); ``owners`` are its processes' ports,
    which the containers listen on, and here they must be free on the host (with bridge
    networking only the published ones). A multi-host role (``herd``, ``agent``) always uses
    host networking: its peers are other hosts, which reach it at ``herd_host`` / its own address.
    ``tls`` turns TLS and mTLS on for every hop, as in the native mode; with ``tls_hosts`` its
    files are made (or renewed) for those names plus the containers' names and addresses,
    without it they must exist.
    """
    if not daemon_answers():
        err(f"devcluster: no Docker daemon answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): "
             f"start one, or run local processes with KRAKEN_DEVCLUSTER=native")
        return 1
    network, why = network_mode() if role == "all" else ("host", "a multi-host role: host networking")
    out(f"  network   {network} ({why})")
    containers = plan(ports, agents, role, network, herd_host, config_args(config_name, config_dir), peer_ip,
                      bind_address, tls)
    running = [c.name for c in containers if _state(c.name) in ("running", "restarting")]
    if running:
        err(f"devcluster: {', '.join(running)} already running (docker ps --filter name=kraken); "
             f"stop with `make docker_stop`")
        return 1
    published = {port for c in containers for port in c.published}
    problem = busy_ports([(who, port) for who, port in owners if network == "host" or port in published], workdir)
    if problem is not None:
        err(problem)
        return 1
    if tls is not None:
        try:
            _mount_tls(containers, tls, tls_hosts)
        except OSError as e:
            err(f"devcluster: the containers cannot be given the TLS files in {tls.dir}: {e}")
            return 1
    ensure_images({c.role for c in containers})
    for c in containers:
        docker("rm", "-f", c.name)  # a stopped one from an earlier run
    if network == "bridge" and docker("network", "inspect", NETWORK).returncode != 0:
        subnet = os.environ.get(SUBNET_ENV, DEFAULT_SUBNET)
        r = docker("network", "create", "--subnet", subnet, "--label", f"{LABEL}=network", NETWORK)
        if r.returncode != 0:
            err(f"devcluster: cannot create network {NETWORK} ({subnet}; {SUBNET_ENV} picks another): {r.stderr}")
            return 1
    workdir.mkdir(parents=True, exist_ok=True)
    write_state(workdir, {"mode": "docker", "containers": [c.name for c in containers], "workdir": str(workdir)})
    try:
        for c in containers:
            r = docker(*c.run_command(network))
            if r.returncode != 0:
                raise RuntimeError(f"docker run {c.name}: {r.stderr.strip()}")
            _wait_up(c)
            out(f"  started   {c.name} ({image(c.role)})")
    except RuntimeError as e:
        err(f"devcluster: failed to start: {e}")
        stop([c.name for c in containers])
        return 1
    _print_endpoints(containers, ports, agents, role)
    return 0


def _mount_tls(containers: list[Container], tls: DevPki, hosts: list[str] | None) -> None:
    """Make the TLS files (with ``hosts``) and mount them into ``containers``.

    Server certificates name what is dialled: ``hosts`` (loopback, this host: published
    ports, host networking), each container's name and its bridge address (where agents reach
    the herd). The containers' processes run as uid 10001, not as the user who owns the keys
    (which are readable by their owner only), so the keys they read are made readable by one
    group, which they get (``--group-add``): the images' own when this runs as root (no
    container joins the root group), else this user's. The CA's key stays on the host.
    """
    if hosts is not None:
        names = [*hosts, *(c.name for c in containers), *(c.ip for c in containers if c.ip)]
        written = tls.ensure(list(dict.fromkeys(names)))
        out(f"  tls       {tls.dir}: {'made ' + ', '.join(written) if written else 'certificates reused'}")
    else:
        out(f"  tls       {tls.dir} (--tls-dir)")
    gid = IMAGE_GID if os.geteuid() == 0 else os.getegid()
    files = sorted(f for f in tls.dir.resolve().glob("*.pem") if f.name != "ca-key.pem")
    for key in (f for f in files if f.name.endswith("-key.pem")):
        if key.stat().st_gid != gid:
            os.chown(key, -1, gid)
        key.chmod(0o640)
    for c in containers:
        c.mounts = {f: IMAGE_TLS_DIR / f.name for f in files}
        c.groups = [gid]


def _print_endpoints(containers: list[Container], ports: HerdPorts, agents: dict[str, AgentPorts], role: str) -> None:
    out("")
    out(f"  {'container':<18} {'answers at':<36} logs")
    for c in containers:
        out(f"  {c.name:<18} {c.probe:<36} docker logs -f {c.name}")
    out("")
    if role != "herd":
        for name, agent in agents.items():
            out(f"  {name} pulls on localhost:{agent.registry} (P2P port {agent.p2p}, server {agent.server})")
    out("  docker ps --filter name=kraken    shows them; `make docker_stop` removes them")
    if role != "agent":
        out(f"ready: push through localhost:{ports.proxy}, e.g. docker push localhost:{ports.proxy}/<repo>:<tag>")
    else:
        out(f"ready: pull through localhost:{next(iter(agents.values())).registry}")


def stop(names: list[str] | None = None) -> int:
    """Stop and remove ``names`` (default: every container this module started) and the
    bridge network if nothing uses it any more."""
    if shutil.which("docker") is None:
        out("devcluster: no docker CLI here, so no kraken containers")
        return 0
    if names is None:
        names = docker("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}").stdout.split()
    present = [n for n in names if _state(n) != "missing"]
    if present:
        out(f"devcluster: stopping {', '.join(present)}")
        docker("stop", "-t", str(STOP_TIMEOUT), *present, timeout=STOP_TIMEOUT * len(present) + 30)
        docker("rm", "-f", *present)
    if docker("network", "inspect", NETWORK, "--format", f"{{{{index .Labels \"{LABEL}\"}}}}").stdout.strip():
        docker("network", "rm", NETWORK)
    out("devcluster: stopped" if present else "devcluster: no kraken containers")
    return 0
