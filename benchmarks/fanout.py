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

    python benchmarks/fanout.py [--rate 200] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.js.api import StreamConfig

from dispatch.bootstrap import Service
from dispatch.channels.base import Delivered, DeliveryJob, Outcome, Target
from dispatch.events.model import Person
from dispatch.handlers.calls import CallRequest
from dispatch.settings import Settings
from dispatch.store.server import EmbeddedNats, free_port

GROUP_SIZE = 10
RECIPIENTS = GROUP_SIZE - 1
IN_FLIGHT = 64


def roster(groups: int) -> str:
    lines = ["village,group,phone,role,name"]
    for g in range(groups):
        base = 13000000000 + g * 100
        roles = ["leader", "officer", "assistant"] + ["household"] * (GROUP_SIZE - 3)
        for k, role in enumerate(roles):
            lines.append(f"bench,{g},{base + k},{role},m{k}")
    return "\n".join(lines) + "\n"


def caller_of(group: int) -> str:
    return f"+86{13000000000 + group * 100 + GROUP_SIZE - 1}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Result:
    p50_ms: float
    p99_ms: float
    completed: int
    max_rate: float


class Waiters:
    """Per-alarm completion: latency once RECIPIENTS handoffs arrived."""

    def __init__(self) -> None:
        self.count: dict[str, int] = defaultdict(int)
        self.done: dict[str, asyncio.Future[float]] = {}

    def future(self, key: str) -> asyncio.Future[float]:
        fut = self.done.get(key)
        if fut is None:
            fut = self.done[key] = asyncio.get_running_loop().create_future()
        return fut

    def hit(self, key: str, appended_ns: int) -> None:
        self.count[key] += 1
        if self.count[key] == RECIPIENTS:
            fut = self.future(key)
            if not fut.done():
                fut.set_result((time.time_ns() - appended_ns) / 1e6)


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


async def steady(launch, rate: float, seconds: float) -> list[float]:  # type: ignore[no-untyped-def]
    total = int(rate * seconds)
    interval = 1.0 / rate
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(launch(i)))
    return list(await asyncio.gather(*tasks))


async def closed_loop(launch, first: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    counter = [first]
    done = [0]
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            i = counter[0]
            counter[0] += 1
            await launch(i)
            done[0] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return done[0] / (time.perf_counter() - started)


async def run_service(workdir: Path, rate: float, seconds: float, groups: int) -> Result:
    waiters = Waiters()
    settings = Settings(data_dir=workdir / "svc", http=f"127.0.0.1:{free_port()}", log_level="error")
    service = Service(settings, channels=[BenchChannel(waiters)])
    await service.start()
    try:
        await service.groups.import_roster(roster(groups))

        async def launch(i: int) -> float:
            result = await service.calls.call(CallRequest(call_id=f"b{i}", caller=caller_of(i % groups)))
            return await asyncio.wait_for(waiters.future(result.incident_id), 30)

        latencies = await steady(launch, rate, seconds)
        max_rate = await closed_loop(launch, len(latencies), 5.0)
        return Result(pct(latencies, 0.5), pct(latencies, 0.99), len(latencies), max_rate)
    finally:
        await service.stop()


async def run_baseline(workdir: Path, rate: float, seconds: float) -> Result:
    server = EmbeddedNats(workdir / "raw")
    await server.start()
    nc = await nats.connect(server.url, **server.auth.connect_kwargs())
    js = nc.jetstream()
    try:
        await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.alarm.>"], storage="file"))
        waiters = Waiters()

        async def on_notify(msg: nats.aio.msg.Msg) -> None:
            key, appended = msg.data.decode().split(":")
            waiters.hit(key, int(appended))

        for k in range(RECIPIENTS):
            await nc.subscribe(f"bench.notify.{k}", cb=on_notify)

        async def on_alarm(msg: nats.aio.msg.Msg) -> None:
            appended = int(msg.metadata.timestamp.timestamp() * 1e9)
            body = f"{msg.data.decode()}:{appended}".encode()
            for k in range(RECIPIENTS):
                await nc.publish(f"bench.notify.{k}", body)
            await msg.ack()

        await js.subscribe("bench.alarm.>", cb=on_alarm, manual_ack=True)

        async def launch(i: int) -> float:
            key = f"a{i}"
            fut = waiters.future(key)
            await js.publish(f"bench.alarm.{i}", key.encode())
            return await asyncio.wait_for(fut, 30)

        latencies = await steady(launch, rate, seconds)
        max_rate = await closed_loop(launch, len(latencies), 5.0)
        return Result(pct(latencies, 0.5), pct(latencies, 0.99), len(latencies), max_rate)
    finally:
        await nc.close()
        await server.stop()


def median(results: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    from dispatch import logging as dlog

    dlog.configure("console", "error")
    groups = int(args.rate * args.seconds + 2000 * 5) + 100
    service_runs: list[Result] = []
    baseline_runs: list[Result] = []
    for round_ in range(1, args.rounds + 1):
        workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-"))
        try:
            baseline_runs.append(await run_baseline(workdir, args.rate, args.seconds))
            service_runs.append(await run_service(workdir, args.rate, args.seconds, groups))
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
        "baseline": {k: median(baseline_runs, k) for k in ("p50_ms", "p99_ms", "max_rate")},
        "service": {k: median(service_runs, k) for k in ("p50_ms", "p99_ms", "max_rate")},
    }
    figures["ratio"] = {
        "p50": figures["service"]["p50_ms"] / figures["baseline"]["p50_ms"],
        "p99": figures["service"]["p99_ms"] / figures["baseline"]["p99_ms"],
        "max_rate": figures["service"]["max_rate"] / figures["baseline"]["max_rate"],
    }
    print(
        f"\nfan-out at {args.rate:.0f} alarms/s for {args.seconds:.0f} s, 10-number groups, fsync always, "
        f"median of {args.rounds}"
    )
    print(f"{'':<10}{'p50 ms':>10}{'p99 ms':>10}{'max alarms/s':>15}")
    for name in ("baseline", "service"):
        f = figures[name]
        print(f"{name:<10}{f['p50_ms']:>10.2f}{f['p99_ms']:>10.2f}{f['max_rate']:>15,.0f}")
    r = figures["ratio"]
    print(f"{'ratio':<10}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['max_rate']:>15.2f}")
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
