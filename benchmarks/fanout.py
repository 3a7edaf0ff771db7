"""Fan-out benchmark: AlarmRaised appended -> every recipient's delivery handed to its channel.

Both flows run in one process against one embedded nats-server with `sync_interval: always`
(the service's durability), in the same run:

- service: the real Service (handlers, projections, console channel, live hub) with a bench
  channel; a call raises an alarm for a 10-number group, latency is measured from the stored
  AlarmRaised's server timestamp to the moment the 9th delivery reaches the bench channel;
- baseline: plain nats-py — publish to a JetStream stream, a push consumer, 9 core publishes,
  9 subscribers; latency from the stored alarm's timestamp to the 9th subscriber's receipt.

Steady rate (open loop, default 200 alarms/s for 10 s): p50/p99. Max sustained rate: closed loop
with 64 alarms in flight for 5 s. Median of `--rounds` rounds; ratios printed at the end.

`--read-models elsewhere` runs the service with DISPATCH_READ_MODELS=elsewhere and the read models
kept by `dispatch projections run` in a process of its own, on the same server and database.

    python benchmarks/fanout.py [--rate 200] [--seconds 10] [--rounds 3] [--read-models here|elsewhere]
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

from common import Result, Waiters, caller_of, closed_loop, pct, roster, run_baseline, start_read_side, steady

from dispatch.bootstrap import Service
from dispatch.channels.base import Delivered, Outcome
from dispatch.events.jobs import DeliveryJob, Target
from dispatch.events.model import Person
from dispatch.handlers.messages import CallRequest
from dispatch.settings import Settings
from dispatch.store.headers import install_header_parser
from dispatch.store.server import free_port


class BenchChannel:
    name = "bench"

    def __init__(self, waiters: Waiters) -> None:
        self.waiters = waiters

    def targets(self, recipient: Person, village: str | None = None) -> list[str]:
        return [recipient.phone]

    async def send(self, job: DeliveryJob, target: Target) -> Outcome:
        self.waiters.hit(job.incident_id, int(job.appended_at.timestamp() * 1e9))
        return Delivered()

    async def close(self) -> None:
        return None


async def run_service(workdir: Path, rate: float, seconds: float, groups: int, read_models: str = "here") -> Result:
    waiters = Waiters()
    settings = Settings(
        data_dir=workdir / "svc", http=f"127.0.0.1:{free_port()}", log_level="error", read_models=read_models
    )
    service = Service(settings, channels=[BenchChannel(waiters)])
    await service.start()
    projector = await start_read_side(settings.data_dir) if read_models == "elsewhere" else None
    try:
        await service.groups.import_roster(roster(groups))

        async def launch(i: int) -> float:
            result = await service.calls.call(CallRequest(call_id=f"b{i}", caller=caller_of(i % groups)))
            return await asyncio.wait_for(waiters.future(result.incident_id), 30)

        latencies = await steady(launch, rate, seconds)
        max_rate = await closed_loop(launch, len(latencies), 5.0)
        return Result(pct(latencies, 0.5), pct(latencies, 0.99), len(latencies), max_rate)
    finally:
        if projector is not None:
            projector.terminate()
            await projector.wait()
        await service.stop()


def median(results: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


async def main() -> int:
    install_header_parser()  # as the service does (dispatch.store.headers)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--read-models", choices=("here", "elsewhere"), default="here")
    args = parser.parse_args()
    from dispatch.observe import logging as dlog

    dlog.configure("console", "error")
    groups = int(args.rate * args.seconds + 2000 * 5) + 100
    service_runs: list[Result] = []
    baseline_runs: list[Result] = []
    for round_ in range(1, args.rounds + 1):
        workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-"))
        try:
            baseline_runs.append(await run_baseline(workdir, args.rate, args.seconds))
            service_runs.append(await run_service(workdir, args.rate, args.seconds, groups, args.read_models))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        b, s = baseline_runs[-1], service_runs[-1]
        print(
            f"round {round_}: baseline p50 {b.p50_ms:.2f} p99 {b.p99_ms:.2f} ms max {b.max_rate:,.0f}/s | "
            f"service p50 {s.p50_ms:.2f} p99 {s.p99_ms:.2f} ms max {s.max_rate:,.0f}/s",
            file=sys.stderr,
        )
    figures = {
        "rate": args.rate,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "read_models": args.read_models,
        "baseline": {k: median(baseline_runs, k) for k in ("p50_ms", "p99_ms", "max_rate")},
        "service": {k: median(service_runs, k) for k in ("p50_ms", "p99_ms", "max_rate")},
    }
    figures["ratio"] = {
        "p50": figures["service"]["p50_ms"] / figures["baseline"]["p50_ms"],
        "p99": figures["service"]["p99_ms"] / figures["baseline"]["p99_ms"],
        "max_rate": figures["service"]["max_rate"] / figures["baseline"]["max_rate"],
    }
    # each round's own ratio (service and baseline of the same round), beside the ratio of the medians
    figures["ratio_per_round"] = {
        "p50": [s.p50_ms / b.p50_ms for b, s in zip(baseline_runs, service_runs, strict=True)],
        "p99": [s.p99_ms / b.p99_ms for b, s in zip(baseline_runs, service_runs, strict=True)],
        "max_rate": [s.max_rate / b.max_rate for b, s in zip(baseline_runs, service_runs, strict=True)],
    }
    print(
        f"\nfan-out at {args.rate:.0f} alarms/s for {args.seconds:.0f} s, 10-number groups, fsync always, "
        f"median of {args.rounds}, read models {args.read_models}"
    )
    print(f"{'':<10}{'p50 ms':>10}{'p99 ms':>10}{'max alarms/s':>15}")
    for name in ("baseline", "service"):
        f = figures[name]
        print(f"{name:<10}{f['p50_ms']:>10.2f}{f['p99_ms']:>10.2f}{f['max_rate']:>15,.0f}")
    r = figures["ratio"]
    print(f"{'ratio':<10}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['max_rate']:>15.2f}")
    per = figures["ratio_per_round"]
    print(
        "ratio per round: "
        + "; ".join(f"{k} {' / '.join(f'{v:.2f}' for v in per[k])}" for k in ("p50", "p99", "max_rate"))
    )
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
