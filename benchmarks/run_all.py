"""Every benchmark in one command, each beside its raw baseline, then one table against the targets.

    python benchmarks/run_all.py [--quick] [--out DIR] [--read-models here|elsewhere] [--json FILE]

Runs fanout.py (alarm path), e2e.py (HTTP call -> webhooks, beside its floor), storm.py (closed loop, one and two
processes), replay.py (projections rebuilt vs a raw ordered read), directory.py (1M numbers) and
deadlines.py (deadlines due together, and across a kill -9),
one after another (never two at once: they share the machine), each with `--json`, and prints the
figures with their targets. `--quick` shortens every run for a smoke check; the figures in
docs/benchmarks.md come from a full run on a quiet machine. `--read-models elsewhere` runs fanout.py,
e2e.py and storm.py with the read models in a process of their own (DISPATCH_READ_MODELS=elsewhere).
A ratio to the raw baseline is shown as the ratio of the medians, with each round's own ratio beside it
(a round's service and baseline ran minutes apart at most; the medians may come from different rounds).
`--json FILE` writes every benchmark's figures and the table's rows to one file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUNS: dict[str, tuple[list[str], list[str]]] = {
    "fanout": (["--rounds", "3"], ["--rounds", "1", "--seconds", "3"]),
    "e2e": (["--rounds", "3", "--floor"], ["--rounds", "1", "--seconds", "3", "--floor"]),
    "storm": ([], ["--seconds", "3", "--groups", "8000"]),
    "replay": ([], ["--events", "20000"]),
    "directory": ([], ["--groups", "2000", "--lookups", "5000"]),
    "deadlines": (["--alarms", "100", "1000", "5000", "--kill"], ["--alarms", "100", "--kill"]),
}
TAKE_READ_MODELS = ("fanout", "e2e", "storm")


def _per_round(ratios: list[float] | None) -> str:
    """` (rounds a / b / c)`: each round's own ratio, when the benchmark gave them."""
    return f" (rounds {' / '.join(f'{r:.2f}' for r in ratios)})" if ratios else ""


def target_rows(f: dict[str, dict[str, float]]) -> list[tuple[str, str, str, bool | None]]:
    """(measure, figure, target, met) for every target whose figures are present (issue 9's, as issue 25
    tightened them: alarm path <= 1.3x, storm >= 0.3x, and scale-out by CPU per alarm, not by rate)."""
    rows: list[tuple[str, str, str, bool | None]] = []
    if "fanout" in f:
        fo = f["fanout"]
        r = fo["ratio"]["p99"]  # type: ignore[index]
        rows.append(
            (
                "alarm path p99 (200/s)",
                f"{fo['service']['p99_ms']:.2f} ms vs raw {fo['baseline']['p99_ms']:.2f} ms = {r:.2f}x"  # type: ignore[index]
                + _per_round(fo.get("ratio_per_round", {}).get("p99")),  # type: ignore[attr-defined]
                "<= 1.3x",
                r <= 1.3,
            )
        )
    if "e2e" in f:
        e = f["e2e"]
        rows.append(
            (
                "POST /v1/calls -> 9 webhooks p99 (200/s)",
                f"{e['e2e_p99_ms']:.2f} ms vs raw {e['baseline_p99_ms']:.2f} ms = {e['p99_ratio']:.2f}x"
                + _per_round(e.get("p99_ratio_per_round"))  # type: ignore[arg-type]
                + f"; serve CPU {e.get('serve_cpu_ms_per_call', float('nan')):.2f} ms per call",
                "<= 4x",
                e["p99_ratio"] <= 4,
            )
        )
        if "floor_cpu_ms_per_call" in e:
            machine = e["serve_cpu_ms_per_call"] + e["serve_nats_cpu_ms_per_call"]
            floor = e["floor_cpu_ms_per_call"] + e["floor_nats_cpu_ms_per_call"]
            rows.append(
                (
                    "machine CPU per call, serve / the floor (e2e_floor.py)",
                    f"{machine:.2f} / {floor:.2f} ms = {machine / floor:.2f}x"
                    + _per_round(e.get("floor_cpu_ratio_per_round"))  # type: ignore[arg-type]
                    + f"; the floor's p99 {e['floor_p99_ms']:.2f} ms = "
                    f"{e['floor_p99_ms'] / e['baseline_p99_ms']:.2f}x raw",
                    "reported",
                    None,
                )
            )
    if "storm" in f:
        s = f["storm"]
        rows.append(
            (
                "storm, one process",
                f"{s['one_process_per_s']:,.0f}/s vs raw max {s['baseline_max_per_s']:,.0f}/s = "
                f"{s['one_vs_baseline']:.2f}x (p99 {s['one_process_p99_ms']:.1f} ms)",
                ">= 0.3x",
                s["one_vs_baseline"] >= 0.3,
            )
        )
        if "scale_out_cpu_ratio" in s:
            rows.append(
                (
                    "storm, machine CPU per alarm, two processes / one",
                    f"{s['two_processes_machine_cpu_ms_per_alarm']:.2f} / "
                    f"{s['one_process_machine_cpu_ms_per_alarm']:.2f} ms = {s['scale_out_cpu_ratio']:.2f}x "
                    f"({s['two_processes_per_s']:,.0f}/s = {s['two_vs_one']:.2f}x one on "
                    f"{s['cores']:.0f} cores; 4 cores, predicted: {s['four_cores_predicted_per_s']:,.0f}/s "
                    f"with {s['four_cores_processes']:.0f} processes)",
                    "<= 1.1x",
                    s["scale_out_cpu_ratio"] <= 1.1,
                )
            )
    if "replay" in f:
        rp = f["replay"]
        for backend in ("sqlite", "postgresql"):
            ratio = rp.get(f"{backend}_ratio")
            if ratio is not None:
                rows.append(
                    (
                        f"replay into {backend}",
                        f"{rp.get(f'{backend}_events_per_s', 0):,.0f} events/s = {ratio:.2f}x raw read",
                        ">= 0.4x",
                        ratio >= 0.4,
                    )
                )
    if "directory" in f:
        d = f["directory"]
        rows.append(
            (
                f"directory lookup p99 ({d['numbers']:,.0f} numbers)",
                f"memberships {d['memberships_p99_us']:.1f} us, route_call {d['route_call_p99_us']:.1f} us",
                "<= 50 us",
                d["route_call_p99_us"] <= 50,
            )
        )
        rows.append(
            (
                "service RSS with the directory",
                f"{d['rss_after_import_mb']:.0f} MB after import, {d['rss_after_restart_mb']:.0f} MB after restart",
                "<= 250 MB",
                max(d["rss_after_import_mb"], d["rss_after_restart_mb"]) <= 250,
            )
        )
        rows.append(
            (
                "directory import / restart",
                f"{d['import_s']:.0f} s ({d['import_numbers_per_s']:,.0f} numbers/s) / {d['restart_to_ready_s']:.1f} s",
                "reported",
                None,
            )
        )
        if "list_groups_first_page_ms" in d:
            rows.append(
                (
                    "console lists at that scale",
                    f"villages {d['list_villages_ms']:.0f} ms, groups first page "
                    f"{d['list_groups_first_page_ms']:.0f} ms, then {d['list_groups_page_p50_ms']:.0f} ms a page, "
                    f"one village {d['list_village_groups_ms']:.0f} ms",
                    "reported",
                    None,
                )
            )
    if "deadlines" in f:
        cases = f["deadlines"]["cases"]  # type: ignore[index]
        for case in cases:  # type: ignore[attr-defined]
            if case["name"] != "new":
                continue
            t1, t2 = case["tier1"], case["tier2"]
            killed = ", across kill -9" if case["kill"] else ""
            rows.append(
                (
                    f"deadlines: {case['alarms']:,} due together{killed}",
                    f"tier 1 p99 {t1['p99']:.2f} s max {t1['max']:.2f} s, tier 2 p99 {t2['p99']:.2f} s "
                    f"(raw schedules p99 {case['baseline']['p99']:.2f} s)",
                    "1,000: p99 <= 0.5 s, max <= 1 s" if not case["kill"] else "reported",
                    (t1["p99"] <= 0.5 and t1["max"] <= 1.0) if case["alarms"] == 1000 and not case["kill"] else None,
                )
            )
    return rows


def summary(
    figures: dict[str, dict[str, float]],
    rows: list[tuple[str, str, str, bool | None]],
    *,
    read_models: str,
    quick: bool,
) -> dict[str, object]:
    """What `--json` writes: every benchmark's figures as it wrote them, and the table's rows."""
    return {
        "read_models": read_models,
        "quick": quick,
        "figures": figures,
        "targets": [{"measure": m, "figure": fig, "target": t, "met": met} for m, fig, t, met in rows],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="directory for each benchmark's JSON (default: a temporary one)")
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="run only these")
    parser.add_argument("--read-models", choices=("here", "elsewhere"), default="here")
    parser.add_argument("--json", help="also write every benchmark's figures and the table's rows to this file")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="dispatch-bench-all-"))
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict[str, float]] = {}
    for name, (full, quick) in RUNS.items():
        if args.only and name not in args.only:
            continue
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"== {name}: {script.name} missing, skipped", file=sys.stderr)
            continue
        target = out / f"{name}.json"
        print(f"== {name}", file=sys.stderr)
        started = time.perf_counter()
        extra = ["--read-models", args.read_models] if name in TAKE_READ_MODELS else []
        cmd = [sys.executable, str(script), *(quick if args.quick else full), *extra, "--json", str(target)]
        done = subprocess.run(cmd)
        if done.returncode != 0 or not target.exists():
            print(f"== {name} failed ({done.returncode})", file=sys.stderr)
            continue
        figures[name] = json.loads(target.read_text())
        print(f"== {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(f"\nread models: {args.read_models} ({', '.join(TAKE_READ_MODELS)})")
    rows = target_rows(figures)
    print("\n| measure | figure | target | met |\n| --- | --- | --- | --- |")
    for measure, figure, target, met in rows:
        mark = "-" if met is None else ("yes" if met else "**no**")
        print(f"| {measure} | {figure} | {target} | {mark} |")
    print(f"\nJSON per benchmark: {out}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(summary(figures, rows, read_models=args.read_models, quick=args.quick), indent=2)
        )
        print(f"JSON of the whole run: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
