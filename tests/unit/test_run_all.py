"""benchmarks/run_all.py: each round's own ratio beside the ratio of the medians, and `--json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from run_all import summary, target_rows  # noqa: E402
from storm import predict  # noqa: E402

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
    assert "= 1.50x (rounds 1.25 / 1.50 / 2.75)" in fanout and met is False, "issue 25's target is 1.3x"
    e2e, met = rows["POST /v1/calls -> 9 webhooks p99 (200/s)"]
    assert "= 4.50x (rounds 3.00 / 4.50 / 6.00)" in e2e and "serve CPU 3.50 ms" in e2e and met is False


def test_the_floor_of_e2e_is_reported_beside_serve_round_by_round() -> None:
    floor = {
        "serve_nats_cpu_ms_per_call": 1.3,
        "floor_cpu_ms_per_call": 1.5,
        "floor_nats_cpu_ms_per_call": 1.3,
        "floor_p99_ms": 6.0,
        "floor_cpu_ratio_per_round": [1.58, 1.61, 1.51],
    }
    rows = {measure: (figure, met) for measure, figure, _, met in target_rows({"e2e": E2E | floor})}  # type: ignore[dict-item]
    figure, met = rows["machine CPU per call, serve / the floor (e2e_floor.py)"]
    assert figure.startswith("4.80 / 2.80 ms = 1.71x (rounds 1.58 / 1.61 / 1.51)") and met is None
    assert figure.endswith("the floor's p99 6.00 ms = 3.00x raw")
    assert len(target_rows({"e2e": E2E})) == 1, "no floor row without the floor's figures"


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
    assert [t["met"] for t in written["targets"]] == [False, False]


def test_scale_out_is_judged_by_cpu_per_alarm_and_predicts_four_cores() -> None:
    storm = {
        "one_process_per_s": 480.0,
        "one_process_p99_ms": 150.0,
        "one_process_worker_cpu_ms_per_alarm": 2.0,
        "one_process_machine_cpu_ms_per_alarm": 2.8,
        "two_processes_per_s": 500.0,
        "two_processes_p99_ms": 140.0,
        "two_processes_machine_cpu_ms_per_alarm": 3.0,
        "baseline_max_per_s": 1500.0,
        "one_vs_baseline": 0.32,
        "two_vs_one": 500 / 480,
        "cores": 2.0,
    }
    storm |= predict(storm)
    # one loop carries 500/s at 2 ms; 4 cores at 3 ms per alarm carry 1,333/s, reached with 3 processes
    assert round(storm["four_cores_predicted_per_s"]) == 1333 and storm["four_cores_processes"] == 3
    assert round(storm["scale_out_cpu_ratio"], 3) == round(3.0 / 2.8, 3)
    rows = {measure: (figure, met) for measure, figure, _, met in target_rows({"storm": storm})}
    assert rows["storm, one process"][1] is True
    figure, met = rows["storm, machine CPU per alarm, two processes / one"]
    assert "3.00 / 2.80 ms = 1.07x" in figure and "1,333/s with 3 processes" in figure and met is True
