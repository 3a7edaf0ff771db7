"""End to end: `POST /v1/calls` -> all 9 signed webhooks received, against `dispatch serve`.

In one run, on one machine:

- `dispatch serve` as a subprocess on its embedded defaults (own nats-server, fsync always, SQLite
  read models), `DISPATCH_WEBHOOK_URLS` pointing at a receiver in a second subprocess (a bare
  asyncio HTTP/1.1 server, so the receiver is not what is measured);
- an open loop of calls at `--rate` calls/s for `--seconds` s over HTTP, each from a different
  10-number group, sent by the channels' own keep-alive client (`dispatch.channels.http`; the
  receiver is an `asyncio.Protocol`): the load generator and the receiver share the two cores
  with the service, so the cheaper they are the less of the tail is theirs (at 200 calls/s,
  aiohttp and asyncio streams kept 0.30 cores busy between them, these 0.21-0.24); latency from
  just before the POST is sent to the 9th webhook of that incident arriving at the receiver
  (both on this machine's clock);
- the raw baseline of benchmarks/fanout.py (plain nats-py fan-out) in the same run; the target
  is p99 <= 4x that baseline's p99;
- the CPU `dispatch serve` spent per call during the load (its own process, not its nats-server),
  and with `--read-models elsewhere` (DISPATCH_READ_MODELS=elsewhere, the read models kept by
  `dispatch projections run` beside it) the worker's too;
- with `--floor`, in every round after serve, `benchmarks/e2e_floor.py` under the same load: the
  least a Python process on this stack does per call (the same reads, appends, consumers, webhooks
  and read-model rows; no domain), and its CPU per call beside serve's.

    python benchmarks/e2e.py [--rate 200] [--seconds 10] [--rounds 3] [--read-models here|elsewhere]
                             [--json FILE] [--floor]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    Receiver,
    caller_of,
    cpu_seconds,
    pct,
    read_side_caught_up,
    roster,
    run_baseline,
    start_read_side,
    start_serve,
    steady,
)
from cpubudget import Profiler, budget, fold, table

from dispatch.channels.http import HttpPoster
from dispatch.store.connect import connect
from dispatch.store.server import free_port, running_auth, running_url


@dataclass
class E2E:
    p50_ms: float
    p99_ms: float
    calls: int
    serve_cpu_ms: float
    read_side_cpu_ms: float | None
    nats_cpu_ms: float = 0.0
    samples: Counter[str] = field(default_factory=Counter)  # --profile: py-spy samples per stage
    refused: int = 0  # 503s (the service could not append in time): counted, not in the latencies


def serve_env(hook: str, read_models: str) -> dict[str, str]:
    """The service of this benchmark: webhooks to `hook`, a duty desk (/readyz is 200 only with a
    channel and a duty desk), its read models `here` or `elsewhere`."""
    return {
        "DISPATCH_WEBHOOK_URLS": hook,
        "DISPATCH_WEBHOOK_SECRET": "bench-secret",
        "DISPATCH_DUTY_DESK": "+8673184512345",
        "DISPATCH_READ_MODELS": read_models,
    }


async def load(
    http: HttpPoster, base: str, token: str, receiver: Receiver, pids: list[int], rate: float, seconds: float
) -> tuple[list[float], int, list[float]]:
    """The open loop of calls at `rate` for `seconds` against `base`: the latencies (POST -> the 9th
    webhook, ms), the calls refused (503), and each of `pids`' CPU ms per call answered."""
    call_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def launch(i: int) -> float | None:
        body = json.dumps({"call_id": f"e2e-{i}", "caller": caller_of(i)}).encode()
        sent = time.time()
        answer = await http.post(f"{base}/v1/calls", body, call_headers)
        if answer.status == 503:  # refused, not lost: the gateway retries it (counted, left out)
            return None
        if answer.status != 202:
            raise RuntimeError(f"call {i}: {answer.status} {answer.body[:500]!r}")
        incident = answer.json()["incident_id"]
        arrived = await asyncio.wait_for(receiver.alarm_rung(incident), 60)
        return (arrived - sent) * 1000

    # this process's own heap grows round by round (the baseline, earlier rounds): a full collection
    # of it during the load would be counted as the service's latency (round 3's p99 was 3.6x round
    # 1's with the same service), so what is alive now is left out of the cyclic GC meanwhile
    gc.collect()
    gc.freeze()
    try:
        cpu0 = [cpu_seconds([pid], this_process=False) for pid in pids]
        answered = await steady(launch, rate, seconds)
    finally:
        gc.unfreeze()
    latencies = [ms for ms in answered if ms is not None]
    cpu = [
        (cpu_seconds([pid], this_process=False) - c) * 1000 / len(latencies) for pid, c in zip(pids, cpu0, strict=True)
    ]
    return latencies, len(answered) - len(latencies), cpu


async def run_e2e(
    workdir: Path,
    rate: float,
    seconds: float,
    read_models: str,
    profile: Path | None = None,
    *,
    source: Path | None = None,
) -> E2E:
    """One round against `dispatch serve`; `source`: the tree whose code it runs (an A/B, `ab.py`),
    else the one on this process's path."""
    receiver = Receiver()
    await receiver.start()
    port = free_port()
    data_dir = workdir / "svc"
    env = serve_env(receiver.hook, read_models) | ({"PYTHONPATH": str(source)} if source is not None else {})
    proc = await asyncio.to_thread(start_serve, data_dir, port, env, cwd=source)
    projector = await start_read_side(data_dir) if read_models == "elsewhere" else None
    try:
        token = (data_dir / "admin.token").read_text().strip()
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        http = HttpPoster(timeout=300, max_connections=256)  # the roster import takes minutes on a busy machine
        try:
            groups = int(rate * seconds) + 10
            csv = roster(groups).encode()
            answer = await http.post(f"{base}/v1/groups/import", csv, {**headers, "Content-Type": "text/csv"})
            if answer.status != 200:
                raise RuntimeError(f"import: {answer.status} {answer.body[:500]!r}")
            if projector is not None:
                nc = await connect([running_url(data_dir) or ""], running_auth(data_dir))
                try:
                    await read_side_caught_up(nc, f"sqlite:///{data_dir / 'dispatch.db'}", projector)
                finally:
                    await nc.close()

            nats_pid = int((data_dir / "nats" / "pid").read_text())
            pids = [proc.pid, nats_pid] + ([projector.pid] if projector is not None else [])
            profiler = Profiler(proc.pid, profile) if profile is not None else None
            if profiler is not None:
                await profiler.start()
            latencies, refused, cpu = await load(http, base, token, receiver, pids, rate, seconds)
            samples = fold(await profiler.stop()) if profiler is not None else Counter[str]()
        finally:
            await http.close()
        return E2E(
            pct(latencies, 0.5),
            pct(latencies, 0.99),
            len(latencies),
            cpu[0],
            cpu[2] if projector is not None else None,
            nats_cpu_ms=cpu[1],
            samples=samples,
            refused=refused,
        )
    finally:
        if projector is not None:
            projector.terminate()
            await projector.wait()
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 60)
        await receiver.stop()


@dataclass
class FloorRound:
    p50_ms: float
    p99_ms: float
    calls: int
    cpu_ms: float
    nats_cpu_ms: float
    refused: int
    samples: Counter[str] = field(default_factory=Counter)  # --profile: py-spy samples per stage
    counts: dict[str, int] = field(default_factory=dict)  # what the floor did, as it printed at its end


async def run_floor(workdir: Path, rate: float, seconds: float, profile: Path | None = None) -> FloorRound:
    """One round against `benchmarks/e2e_floor.py` (the least a process does per call), same load;
    `profile`: py-spy's raw stacks of the floor's process kept there."""
    receiver = Receiver()
    await receiver.start()
    port = free_port()
    token = "floor-token"
    floor_dir = workdir / "floor"
    floor_dir.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).with_name("e2e_floor.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), receiver.hook, str(port), str(floor_dir), token, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        while (line := await asyncio.wait_for(proc.stdout.readline(), 60)) != b"ready\n":
            if not line:
                raise RuntimeError("e2e_floor.py ended before it was ready")
        pids = [proc.pid, int((floor_dir / "floor-nats-pid").read_text())]
        http = HttpPoster(timeout=300, max_connections=256)
        profiler = Profiler(proc.pid, profile) if profile is not None else None
        if profiler is not None:
            await profiler.start()
        try:
            latencies, refused, cpu = await load(http, f"http://127.0.0.1:{port}", token, receiver, pids, rate, seconds)
        finally:
            await http.close()
        samples = fold(await profiler.stop()) if profiler is not None else Counter[str]()
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        counts = next(json.loads(line[7:]) for line in out.decode().splitlines() if line.startswith("counts "))
        return FloorRound(
            pct(latencies, 0.5), pct(latencies, 0.99), len(latencies), cpu[0], cpu[1], refused, samples, counts
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await receiver.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--read-models", choices=("here", "elsewhere"), default="here")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--floor", action="store_true", help="also the floor (benchmarks/e2e_floor.py) in every round, same load"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample serve with py-spy during the load, keep the raw stacks in DIR and print serve's CPU per "
        "call by stage (benchmarks/cpubudget.py)",
    )
    args = parser.parse_args()
    rows: list[tuple[float, float, E2E]] = []
    raw_cpu: list[float] = []
    floors: list[FloorRound] = []
    if args.profile:
        await asyncio.to_thread(Path(args.profile).mkdir, parents=True, exist_ok=True)
    for round_ in range(1, args.rounds + 1):
        workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-e2e-"))
        try:
            base = await run_baseline(workdir, args.rate, args.seconds, closed_seconds=0)
            profile = Path(args.profile) / f"e2e-round{round_}.txt" if args.profile else None
            e2e = await run_e2e(workdir, args.rate, args.seconds, args.read_models, profile)
            if args.floor:
                floor_profile = Path(args.profile) / f"e2e-floor-round{round_}.txt" if args.profile else None
                floors.append(await run_floor(workdir, args.rate, args.seconds, floor_profile))
                f = floors[-1]
                print(
                    f"round {round_}: floor p50 {f.p50_ms:.2f} p99 {f.p99_ms:.2f} ms ({f.calls} calls, "
                    f"{f.refused} refused) | CPU per call: floor {f.cpu_ms:.2f}, "
                    f"its nats-server {f.nats_cpu_ms:.2f} ms",
                    file=sys.stderr,
                )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        rows.append((base.p50_ms, base.p99_ms, e2e))
        raw_cpu.append(base.cpu_ms_per_alarm)
        worker = "" if e2e.read_side_cpu_ms is None else f", read side {e2e.read_side_cpu_ms:.2f}"
        print(
            f"round {round_}: baseline p50 {base.p50_ms:.2f} p99 {base.p99_ms:.2f} ms | "
            f"POST /v1/calls -> 9 webhooks p50 {e2e.p50_ms:.2f} p99 {e2e.p99_ms:.2f} ms "
            f"({e2e.calls} calls, {e2e.refused} refused) | "
            f"CPU per call: serve {e2e.serve_cpu_ms:.2f}{worker}, its nats-server {e2e.nats_cpu_ms:.2f}, "
            f"raw baseline {base.cpu_ms_per_alarm:.2f} ms",
            file=sys.stderr,
        )
    figures = {
        "rate": args.rate,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "read_models": args.read_models,
        "baseline_p50_ms": statistics.median(r[0] for r in rows),
        "baseline_p99_ms": statistics.median(r[1] for r in rows),
        "e2e_p50_ms": statistics.median(r[2].p50_ms for r in rows),
        "e2e_p99_ms": statistics.median(r[2].p99_ms for r in rows),
        "serve_cpu_ms_per_call": statistics.median(r[2].serve_cpu_ms for r in rows),
        "refused": sum(r[2].refused for r in rows),
        "serve_nats_cpu_ms_per_call": statistics.median(r[2].nats_cpu_ms for r in rows),
        "baseline_cpu_ms_per_alarm": statistics.median(raw_cpu),
    }
    if args.profile:
        samples = sum((r[2].samples for r in rows), Counter[str]())
        figures["serve_cpu_us_by_stage"] = budget(samples, figures["serve_cpu_ms_per_call"] * 1000)
        if floors:
            floor_samples = sum((f.samples for f in floors), Counter[str]())
            floor_cpu_us = statistics.median(f.cpu_ms for f in floors) * 1000
            figures["floor_cpu_us_by_stage"] = budget(floor_samples, floor_cpu_us)
        figures["profile_samples"] = sum(samples.values())
    if args.read_models == "elsewhere":
        figures["read_side_cpu_ms_per_call"] = statistics.median(r[2].read_side_cpu_ms or 0.0 for r in rows)
    figures["p99_ratio"] = figures["e2e_p99_ms"] / figures["baseline_p99_ms"]
    # each round's own ratio (e2e and baseline of the same round), beside the ratio of the medians
    figures["p99_ratio_per_round"] = [r[2].p99_ms / r[1] for r in rows]
    figures["cpu_ratio_per_round"] = [
        (r[2].serve_cpu_ms + r[2].nats_cpu_ms) / raw for r, raw in zip(rows, raw_cpu, strict=True)
    ]
    print(
        f"\nPOST /v1/calls -> 9 webhooks at {args.rate:.0f} calls/s, {args.seconds:.0f} s, median of {args.rounds}, "
        f"read models {args.read_models}"
    )
    print(f"{'':<10}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'baseline':<10}{figures['baseline_p50_ms']:>10.2f}{figures['baseline_p99_ms']:>10.2f}")
    print(f"{'e2e':<10}{figures['e2e_p50_ms']:>10.2f}{figures['e2e_p99_ms']:>10.2f}")
    print(f"{'ratio':<10}{figures['e2e_p50_ms'] / figures['baseline_p50_ms']:>10.2f}{figures['p99_ratio']:>10.2f}")
    print(f"p99 ratio per round: {' / '.join(f'{v:.2f}' for v in figures['p99_ratio_per_round'])}")
    print(f"serve CPU per call {figures['serve_cpu_ms_per_call']:.2f} ms")
    machine = figures["serve_cpu_ms_per_call"] + figures["serve_nats_cpu_ms_per_call"]
    print(
        f"machine CPU per call (serve + its nats-server) {machine:.2f} ms; raw baseline per alarm "
        f"{figures['baseline_cpu_ms_per_alarm']:.2f} ms; ratio {machine / figures['baseline_cpu_ms_per_alarm']:.1f}x "
        f"(per round {' / '.join(f'{v:.1f}' for v in figures['cpu_ratio_per_round'])})"
    )
    if floors:
        figures["floor_p50_ms"] = statistics.median(f.p50_ms for f in floors)
        figures["floor_p99_ms"] = statistics.median(f.p99_ms for f in floors)
        figures["floor_cpu_ms_per_call"] = statistics.median(f.cpu_ms for f in floors)
        figures["floor_nats_cpu_ms_per_call"] = statistics.median(f.nats_cpu_ms for f in floors)
        # each round's machine CPU per call, serve's over the floor's (both in the same round)
        figures["floor_cpu_ratio_per_round"] = [
            (r[2].serve_cpu_ms + r[2].nats_cpu_ms) / (f.cpu_ms + f.nats_cpu_ms)
            for r, f in zip(rows, floors, strict=True)
        ]
        floor_machine = figures["floor_cpu_ms_per_call"] + figures["floor_nats_cpu_ms_per_call"]
        print(
            f"floor: p50 {figures['floor_p50_ms']:.2f} p99 {figures['floor_p99_ms']:.2f} ms; machine CPU per call "
            f"{floor_machine:.2f} ms (process {figures['floor_cpu_ms_per_call']:.2f}, its nats-server "
            f"{figures['floor_nats_cpu_ms_per_call']:.2f}); serve's machine CPU per call over the floor's "
            f"{machine / floor_machine:.2f}x (per round "
            f"{' / '.join(f'{v:.2f}' for v in figures['floor_cpu_ratio_per_round'])})"
        )
    if args.profile:
        print()
        print(
            table(
                {"e2e: serve": figures["serve_cpu_us_by_stage"]}  # type: ignore[dict-item]
                | ({"floor": figures["floor_cpu_us_by_stage"]} if floors else {}),  # type: ignore[dict-item]
                {
                    "serve, total": figures["serve_cpu_ms_per_call"] * 1000,
                    "its nats-server": figures["serve_nats_cpu_ms_per_call"] * 1000,
                    **(
                        {
                            "floor, total": figures["floor_cpu_ms_per_call"] * 1000,
                            "the floor's nats-server": figures["floor_nats_cpu_ms_per_call"] * 1000,
                        }
                        if floors
                        else {}
                    ),
                    "raw baseline per alarm (process + nats-server)": figures["baseline_cpu_ms_per_alarm"] * 1000,
                },
            )
        )
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
