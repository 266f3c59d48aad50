"""``python -m bench [push] [--size-mb N] [--reps N]``: run the benchmarks and print their tables."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import push

BENCHMARKS = {"push": push.run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--size-mb", type=int, default=500, help="layer size of the pushed image")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kraken-bench"))
    args = parser.parse_args(argv)
    for name in args.names:
        print(BENCHMARKS[name](args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
