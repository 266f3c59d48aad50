"""``python -m kraken.devcluster start|stop|health [--workdir DIR]``: what ``make devcluster``,
``make devcluster-stop``, ``make docker_stop``, the deploy scripts and the images' health
checks run; ``tls --out DIR --hosts ...`` makes development certificates for a multi-host
cluster.

``start`` picks the mode (``KRAKEN_DEVCLUSTER``: ``docker`` or ``native``; unset: Docker when
a daemon answers) and hands over to :mod:`kraken.devcluster.docker` or
:mod:`kraken.devcluster.native`; ``--role herd|agent`` starts one host's share of a multi-host
cluster; ``--tls`` (or ``KRAKEN_TLS=1``) turns TLS and mTLS on for every hop with certificates
in ``<workdir>/tls/``, ``--tls-dir DIR`` with the ones in DIR. ``stop`` stops it from any
shell; ``health`` exits 0 when the supervisor runs and
every process answers its probe.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kraken.devcluster import docker as dockermode
from kraken.devcluster import native
from kraken.devcluster.checks import check_plan, scratch_dir
from kraken.devcluster.multiherd import HerdLayout, host_list
from kraken.devcluster.params import (
    CONFIG_ROOT,
    DEFAULT_WORKDIR,
    DEVCLUSTER_PARAMS,
    AgentPorts,
    HerdPorts,
    ParamsError,
    agent_name,
    ambiguous_overrides,
)
from kraken.devcluster.plan import port_owners
from kraken.devcluster.state import err, out, read_state, state_path

MODE_ENV = "KRAKEN_DEVCLUSTER"
TLS_ENV = "KRAKEN_TLS"
#: The devcluster's modes (``KRAKEN_DEVCLUSTER``), as the start banner names them.
MODES = {"native": "native processes", "docker": "Docker containers"}
#: What ``start --role`` runs: the whole devcluster, or one host's share of a multi-host cluster.
ROLES = ("all", "herd", "agent")


def choose_mode() -> tuple[str, str]:
    """(mode, why): ``KRAKEN_DEVCLUSTER`` if set, else Docker when a daemon answers, else
    native processes (``--tls`` runs in either). Raises ``SystemExit`` for an unknown mode."""
    asked = os.environ.get(MODE_ENV, "").strip().lower()
    if asked in ("", "auto"):
        if dockermode.daemon_answers():
            return "docker", f"a Docker daemon answers; {MODE_ENV}=native runs local processes instead"
        return "native", f"no Docker daemon answers; {MODE_ENV}=docker insists on containers"
    if asked in MODES:
        return asked, f"{MODE_ENV}={asked}"
    raise SystemExit(f"devcluster: {MODE_ENV}={asked!r} is not a mode: use docker or native")


def stop_docker(workdir: Path) -> int:
    """``make docker_stop``: remove every container of the Docker devcluster, and forget the
    work dir's state only if it records a Docker devcluster (a native one there keeps running,
    and ``make devcluster-stop`` still needs its state)."""
    code = dockermode.stop()
    state = read_state(workdir)
    if state is not None and state.get("mode") == "docker":
        state_path(workdir).unlink(missing_ok=True)
    elif state is not None:
        out(f"devcluster: {state_path(workdir)} records a {state.get('mode', 'native')} devcluster: kept "
            f"(`make devcluster-stop` stops that one)")
    return code


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kraken.devcluster",
        description="Start, stop or probe the devcluster (Docker containers when a daemon answers, "
                    "else local processes), or one host's share of a multi-host cluster.")
    p.add_argument("action", choices=["start", "stop", "health", "tls"])
    p.add_argument("--role", choices=ROLES, default="all",
                   help="all: the devcluster; herd or agent: this host's share of a multi-host cluster")
    p.add_argument("--herd-host", default="127.0.0.1",
                   help="the herd's address as other hosts reach it (advertised by the herd, dialled by agents)")
    p.add_argument("--config-name", default="development", help="<config-dir>/<component>/<name>.yaml to extend")
    p.add_argument("--config-dir", type=Path, default=CONFIG_ROOT,
                   help="where the component configs are (default %(default)s; the multi-host "
                        "deployment's: examples/multihost/config)")
    p.add_argument("--herd-params", type=Path, default=DEVCLUSTER_PARAMS / "herd_param.sh",
                   help="the herd's ports (default %(default)s)")
    p.add_argument("--agent-params", type=Path, action="append",
                   help="an agent's ports, once per agent (default: agent_one_param.sh and "
                        "agent_two_param.sh beside the herd's; with --role agent, agent_one_param.sh)")
    p.add_argument("--peer-ip", default="", help="an agent host's own address (labels its P2P log lines)")
    p.add_argument("--redis", action="store_true", help="run a redis-server as the tracker's peer store")
    p.add_argument("--origins", type=int, default=1,
                   help="origins on the ring (default 1); with more, each blob is on two of them. The first "
                        "takes the parameter file's ports, origin N those plus 10*(N-1) (15012/15011, ...)")
    p.add_argument("--trackers", type=int, default=1,
                   help="trackers (default 1); with more, they share a redis-server and agents fail over; "
                        "tracker N on the file's port plus 10*(N-1) (15013, ...)")
    p.add_argument("--herd-hosts", default="",
                   help="a herd on several hosts (comma-separated addresses, native mode): with --role herd, "
                        "--herd-host is this one of them; each runs an origin and a proxy")
    p.add_argument("--tracker-hosts", default="", help="with --herd-hosts: the ones running a tracker (default all)")
    p.add_argument("--build-index-hosts", default="",
                   help="with --herd-hosts: the ones running a build-index (default all)")
    p.add_argument("--shared-host", default="",
                   help="with --herd-hosts: the one running testfs and redis (default the first)")
    p.add_argument("--restart-after", type=float, default=None,
                   help="native mode: start a component that exits again after SECONDS, instead of stopping")
    p.add_argument("--bind-address", default="",
                   help="where the herd's servers listen (default: 127.0.0.1 for the whole cluster "
                        "on this host, every interface for --role herd)")
    p.add_argument("--logs", default="", help="'-': every process's log to stdout, not <workdir>/logs/")
    p.add_argument("--docker", action="store_true",
                   help="with stop: remove the devcluster's containers whatever the work dir says "
                        "(make docker_stop)")
    p.add_argument("--tls", action="store_true", default=os.environ.get(TLS_ENV, "") not in ("", "0"),
                   help=f"with start: TLS and mTLS on every hop, piece traffic included (p2p.tls), certificates "
                        f"made (or reused) in <workdir>/tls/ (default: ${TLS_ENV}=1)")
    p.add_argument("--tls-dir", type=Path, default=None,
                   help="with start: TLS and mTLS on every hop, piece traffic included, with the certificates "
                        "in DIR (ca.pem, client.pem, client-key.pem, peer.pem, peer-key.pem, and on the herd "
                        "<component>.pem and -key.pem), made by the tls action")
    p.add_argument("--out", type=Path, help="with tls: where to write the certificates")
    p.add_argument("--hosts", action="append", default=[],
                   help="with tls: a name or address the servers are dialled at (repeat, or comma-separated); "
                        "localhost and 127.0.0.1 are always included")
    p.add_argument("--workdir", default=os.environ.get("DEVCLUSTER_DIR") or str(DEFAULT_WORKDIR),
                   help="data, configs, logs and state (default: $DEVCLUSTER_DIR or %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    workdir = Path(args.workdir)
    if args.action == "health":
        return native.cmd_health(workdir)
    if args.action == "tls":
        return make_certificates(args.out, args.hosts)
    if args.action == "stop":  # creates nothing: a mistyped work dir must not appear on disk
        if args.docker:
            return stop_docker(workdir.resolve())
        return native.cmd_stop(workdir)

    agent_files = args.agent_params or [
        args.herd_params.parent / "agent_one_param.sh",
        *([args.herd_params.parent / "agent_two_param.sh"] if args.role == "all" else [])]
    ambiguous = ambiguous_overrides(agent_files, os.environ)
    if ambiguous is not None:
        err(f"devcluster: not started: {ambiguous}")
        return 1
    if not (1 <= args.origins <= 16 and 1 <= args.trackers <= 8):
        err("devcluster: --origins must be 1-16 and --trackers 1-8")
        return 1
    try:
        ports = HerdPorts.from_params(args.herd_params)
        ports.add_fleet(args.origins, args.trackers)
        agents = {("agent" if args.role == "agent" else agent_name(f)): AgentPorts.from_params(f) for f in agent_files}
    except ParamsError as e:
        err(f"devcluster: {e}")
        return 1
    layout = None
    if args.herd_hosts:
        layout = HerdLayout(host_list(args.herd_hosts), host_list(args.tracker_hosts),
                            host_list(args.build_index_hosts), args.shared_host)
        problem = layout.problem()
        if problem is None and args.role == "herd" and args.herd_host not in layout.hosts:
            problem = f"--herd-host {args.herd_host} is not one of --herd-hosts"
        if problem is None and (args.role == "all" or args.tls or args.tls_dir):
            problem = "--herd-hosts runs --role herd or agent, without TLS"
        if problem is not None:
            err(f"devcluster: not started: {problem}")
            return 1
    tls = tls_dir = tls_hosts = None
    if args.tls or args.tls_dir:
        # Here: stop and health run without cryptography.
        from kraken.devcluster.tls import INTERNAL, DevPki, local_hosts

        tls_dir = args.tls_dir or workdir / "tls"
        tls = DevPki(tls_dir)
        missing = tls.missing(() if args.role == "agent" else INTERNAL)
        if args.tls_dir and missing:
            err(f"devcluster: --tls-dir {tls_dir} lacks {', '.join(missing)} (make them with "
                f"python -m kraken.devcluster tls --out {tls_dir} --hosts <herd address>)")
            return 1
        tls_hosts = None if args.tls_dir else local_hosts(args.herd_host)
    mode, why = choose_mode()
    if mode == "docker" and (args.origins > 1 or args.trackers > 1 or layout is not None or args.restart_after):
        if os.environ.get(MODE_ENV, "").strip().lower() == "docker":
            err("devcluster: --origins and --trackers above 1, --herd-hosts and --restart-after run as native "
                "processes only; "
                f"unset {MODE_ENV} or set it to native")
            return 1
        mode, why = "native", "several origins, trackers or herd hosts: the images run one of each"
    out(f"kraken devcluster: {MODES[mode]} ({why})")
    if mode == "docker":
        # The containers run the plan's processes (the herd's with a redis-server) on its ports,
        # from configs the images copied from this checkout's config/ (docker/build-images.sh;
        # config_args maps --config-dir into the image): checking that config/ here checks the
        # containers', as long as the images are built from this checkout (``make images``).
        with scratch_dir() as scratch:
            procs = native.plan(workdir.resolve(), ports, agents, role=args.role, herd_host=args.herd_host,
                                config_name=args.config_name, config_dir=args.config_dir.resolve(),
                                redis=True, bind_address=args.bind_address, overlay_dir=scratch, tls=tls)
            owners = port_owners(procs)
            problem = check_plan(owners, procs)
        if problem is not None:
            err(problem)
            return 1
        return dockermode.start(
            workdir.resolve(), ports, agents, owners=owners, role=args.role, herd_host=args.herd_host,
            config_name=args.config_name, config_dir=args.config_dir.resolve(), peer_ip=args.peer_ip,
            bind_address=args.bind_address, tls=tls, tls_hosts=tls_hosts)
    return native.cmd_start(workdir, ports, agents, role=args.role, herd_host=args.herd_host,
                            config_name=args.config_name, peer_ip=args.peer_ip, config_dir=args.config_dir.resolve(),
                            redis=args.redis, logs_to_stdout=args.logs == "-", bind_address=args.bind_address,
                            tls=tls, tls_hosts=tls_hosts, layout=layout, restart_after=args.restart_after)


def make_certificates(out_dir: Path | None, hosts: list[str]) -> int:
    """``tls --out DIR --hosts ...``: a development CA, a client pair and one server pair per
    component whose SANs are ``hosts`` plus loopback (files already valid there are kept)."""
    from kraken.devcluster.tls import DevPki

    if out_dir is None:
        err("devcluster: tls needs --out DIR")
        return 1
    names = ["localhost", "127.0.0.1", *(h.strip() for arg in hosts for h in arg.split(",") if h.strip())]
    written = DevPki(out_dir).ensure(list(dict.fromkeys(names)))
    out(f"devcluster: certificates in {out_dir} for {', '.join(dict.fromkeys(names))}: "
        f"{'made ' + ', '.join(written) if written else 'all reused'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
