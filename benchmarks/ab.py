"""A/B of `dispatch serve`'s CPU per call: two source trees, alternated in one window.

    python benchmarks/ab.py OLD_TREE NEW_TREE [--pairs 3] [--rate 100] [--seconds 10] [--json FILE]

Each round is one `e2e.py` round (`POST /v1/calls` -> 9 signed webhooks, open loop at `--rate`,
embedded nats-server, SQLite read models in process) with `dispatch serve` run from OLD_TREE or
NEW_TREE (its PYTHONPATH); the load generator and the receiver are this tree's in both, so only
the service differs. Rounds alternate old, new, new, old, old, new... (each pair's order flips, so
neither side always runs on a warmer or quieter machine). No raw baseline is run: the ratio new /
old is the figure, and on a shared machine only a ratio within one window counts.

Printed per round: serve's CPU per call, its nats-server's, their sum (machine CPU), p50 and p99;
then per pair new / old of the machine CPU, and beside them the ratio of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from e2e import E2E, run_e2e


def _row(label: str, r: E2E) -> str:
    return (
        f"| {label} | {r.serve_cpu_ms:.2f} | {r.nats_cpu_ms:.2f} | {r.serve_cpu_ms + r.nats_cpu_ms:.2f} | "
        f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.calls} |"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, help="the tree to compare against (e.g. a worktree of main)")
    parser.add_argument("new", type=Path, help="the tree with the change")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--json", help="also write every round's figures to this file")
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    rounds: dict[str, list[E2E]] = {"old": [], "new": []}
    for pair in range(args.pairs):
        order = ("old", "new") if pair % 2 == 0 else ("new", "old")
        for side in order:
            workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-ab-"))
            try:
                r = await run_e2e(workdir, args.rate, args.seconds, "here", source=trees[side])
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            rounds[side].append(r)
            print(
                f"pair {pair + 1} {side}: serve {r.serve_cpu_ms:.2f} + nats {r.nats_cpu_ms:.2f} ms CPU per call, "
                f"p50 {r.p50_ms:.1f} p99 {r.p99_ms:.1f} ms ({r.calls} calls, {r.refused} refused)",
                file=sys.stderr,
            )

    def machine(r: E2E) -> float:
        return r.serve_cpu_ms + r.nats_cpu_ms

    ratios = [machine(n) / machine(o) for o, n in zip(rounds["old"], rounds["new"], strict=True)]
    serve_ratios = [n.serve_cpu_ms / o.serve_cpu_ms for o, n in zip(rounds["old"], rounds["new"], strict=True)]
    med = {side: statistics.median(machine(r) for r in rs) for side, rs in rounds.items()}
    med_serve = {side: statistics.median(r.serve_cpu_ms for r in rs) for side, rs in rounds.items()}
    print(
        f"\n{args.pairs} pairs at {args.rate:.0f} calls/s, {args.seconds:.0f} s; old {trees['old']}, new {trees['new']}"
    )
    print("\n| round | serve ms/call | nats-server ms/call | machine ms/call | p50 ms | p99 ms | calls |")
    print("|---|---|---|---|---|---|---|")
    for i in range(args.pairs):
        print(_row(f"{i + 1} old", rounds["old"][i]))
        print(_row(f"{i + 1} new", rounds["new"][i]))
    print(
        f"\nmachine CPU per call, new / old per pair: {' / '.join(f'{r:.2f}' for r in ratios)}; "
        f"ratio of medians {med['new']:.2f} / {med['old']:.2f} ms = {med['new'] / med['old']:.2f}"
    )
    print(
        f"serve alone, new / old per pair: {' / '.join(f'{r:.2f}' for r in serve_ratios)}; "
        f"ratio of medians {med_serve['new']:.2f} / {med_serve['old']:.2f} ms = "
        f"{med_serve['new'] / med_serve['old']:.2f}"
    )
    if args.json:
        figures = {
            "rate": args.rate,
            "seconds": args.seconds,
            "pairs": args.pairs,
            "old": str(trees["old"]),
            "new": str(trees["new"]),
            "rounds": {
                side: [
                    {
                        "serve_cpu_ms": r.serve_cpu_ms,
                        "nats_cpu_ms": r.nats_cpu_ms,
                        "p50_ms": r.p50_ms,
                        "p99_ms": r.p99_ms,
                        "calls": r.calls,
                        "refused": r.refused,
                    }
                    for r in rs
                ]
                for side, rs in rounds.items()
            },
            "machine_ratio_per_pair": ratios,
            "machine_ratio_of_medians": med["new"] / med["old"],
            "serve_ratio_per_pair": serve_ratios,
            "serve_ratio_of_medians": med_serve["new"] / med_serve["old"],
        }
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
