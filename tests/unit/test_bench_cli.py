"""`make bench` runs ``python -m bench`` with no names: the reduced set; ``--full`` every benchmark."""
from __future__ import annotations

import pytest

from bench.__main__ import BENCHMARKS, REDUCED, build_parser, resolve_sizes, selected


def choose(*argv: str) -> list[str]:
    parser = build_parser()
    return selected(parser, parser.parse_args(list(argv)))


def test_no_names_runs_the_reduced_set_and_full_runs_every_benchmark() -> None:
    assert choose() == REDUCED and set(REDUCED) < set(BENCHMARKS)
    assert choose("--full") == list(BENCHMARKS)


def test_full_sizes_only_with_full() -> None:
    parser = build_parser()
    reduced, full, given = (parser.parse_args(a) for a in ([], ["--full"], ["--full", "--grid", "point"]))
    for args in (reduced, full, given):
        resolve_sizes(args)
    assert (reduced.size_mb, reduced.grid) == (200, "reduced")
    assert (full.size_mb, full.grid) == (500, "full")
    assert given.grid == "point"


def test_names_run_in_the_order_given() -> None:
    assert choose("slowreaders", "push", "--reps", "1") == ["slowreaders", "push"]


def test_an_unknown_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        choose("push", "nosuch")
    assert "unknown benchmark 'nosuch'" in capsys.readouterr().err


def test_fanout_runs_the_reduced_grid_by_default() -> None:
    from bench.fanout import GRIDS

    parser = build_parser()
    args = parser.parse_args(["fanout"])
    resolve_sizes(args)
    assert args.grid == "reduced"
    assert len(GRIDS["full"]) == 18
    assert {(p.agents, p.size_mb, p.rate_mb) for p in GRIDS["reduced"]} <= {
        (p.agents, p.size_mb, p.rate_mb) for p in GRIDS["full"]}
