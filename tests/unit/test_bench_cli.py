"""`make bench` runs ``python -m bench`` with no names: that must select every benchmark."""
from __future__ import annotations

import pytest

from bench.__main__ import BENCHMARKS, build_parser, selected


def choose(*argv: str) -> list[str]:
    parser = build_parser()
    return selected(parser, parser.parse_args(list(argv)))


def test_no_names_runs_every_benchmark() -> None:
    assert choose() == list(BENCHMARKS)


def test_names_run_in_the_order_given() -> None:
    assert choose("slowreaders", "push", "--reps", "1") == ["slowreaders", "push"]


def test_an_unknown_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        choose("push", "nosuch")
    assert "unknown benchmark 'nosuch'" in capsys.readouterr().err


def test_fanout_runs_the_reduced_grid_by_default() -> None:
    from bench.fanout import GRIDS

    parser = build_parser()
    assert parser.parse_args(["fanout"]).grid == "reduced"
    assert len(GRIDS["full"]) == 18
    assert {(p.agents, p.size_mb, p.rate_mb) for p in GRIDS["reduced"]} <= {
        (p.agents, p.size_mb, p.rate_mb) for p in GRIDS["full"]}
