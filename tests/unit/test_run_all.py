"""benchmarks/run_all.py: each round's own ratio beside the ratio of the medians, and `--json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from run_all import summary, target_rows  # noqa: E402

FANOUT = {
    "service": {"p50_ms": 1.0, "p99_ms": 3.0, "max_rate": 900.0},
    "baseline": {"p50_ms": 0.5, "p99_ms": 2.0, "max_rate": 3000.0},
    "ratio": {"p50": 2.0, "p99": 1.5, "max_rate": 0.3},
    "ratio_per_round": {"p50": [2.1, 2.0, 1.9], "p99": [1.25, 1.5, 2.75], "max_rate": [0.3, 0.3, 0.3]},
}
E2E = {
    "e2e_p99_ms": 9.0,
    "baseline_p99_ms": 2.0,
    "p99_ratio": 4.5,
    "p99_ratio_per_round": [3.0, 4.5, 6.0],
    "serve_cpu_ms_per_call": 3.5,
}


def test_a_ratio_is_shown_with_each_rounds_own_beside_it() -> None:
    rows = {measure: (figure, met) for measure, figure, _, met in target_rows({"fanout": FANOUT, "e2e": E2E})}  # type: ignore[dict-item]
    fanout, met = rows["alarm path p99 (200/s)"]
    assert "= 1.50x (rounds 1.25 / 1.50 / 2.75)" in fanout and met is True
    e2e, met = rows["POST /v1/calls -> 9 webhooks p99 (200/s)"]
    assert "= 4.50x (rounds 3.00 / 4.50 / 6.00)" in e2e and "serve CPU 3.50 ms" in e2e and met is False


def test_figures_of_a_benchmark_without_rounds_still_make_a_row() -> None:
    old = {k: v for k, v in FANOUT.items() if k != "ratio_per_round"}
    [(_, figure, _, _)] = target_rows({"fanout": old})  # type: ignore[dict-item]
    assert figure.endswith("= 1.50x")


def test_json_holds_every_figure_and_the_tables_rows() -> None:
    figures = {"fanout": FANOUT, "e2e": E2E}
    rows = target_rows(figures)  # type: ignore[arg-type]
    written = json.loads(json.dumps(summary(figures, rows, read_models="elsewhere", quick=True)))  # type: ignore[arg-type]
    assert written["read_models"] == "elsewhere" and written["quick"] is True
    assert written["figures"]["fanout"]["ratio_per_round"]["p99"] == [1.25, 1.5, 2.75]
    assert [t["measure"] for t in written["targets"]] == [r[0] for r in rows]
    assert [t["met"] for t in written["targets"]] == [True, False]
