"""``python -m bench [NAME ...] [--full] [options]``: run the benchmarks and print their tables.

With no name, ``make bench``'s reduced set runs (:data:`REDUCED`, under ten minutes on the
2-core machines: a benchmark per goal of issue 14 and the push, at reduced sizes); ``--full``
runs every benchmark at full size and the fan-out's full grid (about an hour). ``push-tls``
is ``push --tls``, so that the push is measured with and without TLS."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import agentpull, backends, failover, fanout, memory, push, slowreaders, streaming, tracker


def push_tls(args: argparse.Namespace) -> str:
    return push.run(argparse.Namespace(**{**vars(args), "tls": True}))


#: ``make bench``: the push (issue 2's goal), then issue 14's goals at reduced sizes.
REDUCED = ["push", "push-tls", "agentpull", "streaming", "fanout", "tracker", "memory"]

BENCHMARKS = {"push": push.run, "push-tls": push_tls, "fanout": fanout.run, "agentpull": agentpull.run,
              "streaming": streaming.run, "slowreaders": slowreaders.run, "backends": backends.run,
              "failover": failover.run, "tracker": tracker.run, "memory": memory.run}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench")
    # Names are checked by :func:`selected`, not ``choices``: argparse (3.11) checks the empty
    # list of an optional positional against ``choices`` as one value and refuses it.
    parser.add_argument("names", nargs="*", metavar="{" + ",".join(BENCHMARKS) + "}",
                        help=f"the benchmarks to run (default: {' '.join(REDUCED)}; with --full: all)")
    parser.add_argument("--full", action="store_true",
                        help="every benchmark (default: the reduced set), the push at 500 MiB, the fan-out's full grid")
    parser.add_argument("--size-mb", type=int, default=None, help="push: layer size of the pushed image "
                        "(default 200, 500 with --full)")
    parser.add_argument("--reps", type=int, default=3, help="push, agentpull, streaming, failover: repetitions")
    parser.add_argument("--tls", action="store_true",
                        help="push: both registries on HTTPS (distribution's http.tls), the herd's hops on TLS/mTLS")
    parser.add_argument("--agents", type=int, default=8, help="fanout: agent processes pulling at once")
    parser.add_argument("--fanout-size-mb", type=int, default=1024, help="fanout, agentpull: blob size")
    parser.add_argument("--fanout-reps", type=int, default=3, help="fanout: runs of the N pulls")
    parser.add_argument("--grid", choices=("reduced", "full", "point"), default=None,
                        help="fanout: the reduced grid (N 4, 8; S 256 MiB; R 20, 40), issue 14's full grid "
                             "(N 4, 8, 16; S 256, 1024 MiB; R 10, 20, 40), or the one point --agents, "
                             "--fanout-size-mb, --rate-mb (with --fanout-reps and the distribution baseline)")
    parser.add_argument(
        "--rate-mb", type=int, default=20, help="fanout: upload cap of the origin and of each agent, MiB/s"
    )
    parser.add_argument("--piece-mb", type=int, default=0, help="fanout: torrent piece length (0: the origin's table)")
    parser.add_argument("--p2p-tls", action="store_true",
                        help="fanout: pieces over libtorrent's SSL torrents (p2p.tls on the origin and agents)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="fanout: skip the capped distribution registry (N*S/R seconds)")
    parser.add_argument("--stream-size-mb", type=int, default=1024, help="streaming: size of the cold blob")
    parser.add_argument("--readers", type=int, default=200, help="slowreaders: connections that read nothing")
    parser.add_argument("--slow-blob-mb", type=int, default=200, help="slowreaders: size of the blob they ask for")
    parser.add_argument("--backend-size-mb", type=int, default=1024, help="backends: size of the blob moved")
    parser.add_argument("--failover-size-mb", type=int, default=64,
                        help="failover: layer size of each image whose owner is killed")
    parser.add_argument("--steady-size-mb", type=int, default=128,
                        help="failover: blob pulled with every origin up and during a repair")
    parser.add_argument("--repair-blobs", type=int, default=24,
                        help="failover: blobs pushed while their owner is down (repaired on its return)")
    parser.add_argument("--repair-blob-mb", type=int, default=32, help="failover: size of each of them")
    parser.add_argument("--tracker-seconds", type=float, default=15, help="tracker: wrk run per peer store")
    parser.add_argument("--tracker-agents", type=int, default=10_000,
                        help="tracker: agents announcing at the interval to two trackers sharing Redis")
    parser.add_argument("--tracker-agent-seconds", type=float, default=30, help="tracker: length of the agents run")
    parser.add_argument("--memory-blob-mb", type=int, default=1024, help="memory: blob the agent pulls")
    parser.add_argument("--pushes", type=int, default=50, help="memory: blobs pushed at once through the proxy")
    parser.add_argument("--push-blob-mb", type=int, default=16, help="memory: size of each of them")
    parser.add_argument("--announces", type=int, default=5000, help="memory: announces sent to the tracker")
    parser.add_argument("--tags", type=int, default=1000, help="memory: tags put into and read from build-index")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kraken-bench"))
    return parser


def selected(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The benchmarks named on the command line, in the order given; else the reduced set, or
    all of them with ``--full``."""
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (choose from {', '.join(BENCHMARKS)})")
    return list(args.names) or (list(BENCHMARKS) if args.full else list(REDUCED))


def resolve_sizes(args: argparse.Namespace) -> None:
    """The defaults that depend on ``--full``: the push's layer and the fan-out's grid."""
    if args.size_mb is None:
        args.size_mb = 500 if args.full else 200
    if args.grid is None:
        args.grid = "full" if args.full else "reduced"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_sizes(args)
    for name in selected(parser, args):
        print(BENCHMARKS[name](args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
