"""Storm: a closed loop of alarms, 64 in flight, on one service process and then on two.

In one run, on one machine, against one embedded nats-server (`sync_interval: always`):

- worker processes each run the real Service (every handler, projections, live hub) on that
  server, both started after the roster was imported by another process (so neither holds anyone's
  key at first, and every alarm is a group's first in either phase), sharing one PostgreSQL read
  side (as scaled-out processes do; `--postgres`, a fresh schema dropped afterwards), with a bench
  channel that announces, on core NATS, when an incident's 9th recipient has been handed to it;
  calls go in over NATS ingress (`dispatch.ingress.call`, a queue group, so the processes share
  them), each from a different 10-number group;
- a closed loop keeps 64 alarms in flight for `--seconds`: sustained alarms/s and p99 from the
  request to the 9th handoff; first with one worker, then with a second one joined;
- the cores kept busy meanwhile (the workers, the nats-server and this driver, from /proc): on a
  2-core machine two processes cannot scale past what the cores left over allow;
- the raw baseline's maximum (benchmarks/common.py: plain nats-py publish, push consumer, 9 core
  publishes) in the same run. Targets (issue 25): one process >= 0.3x the baseline's max; and, since a
  second process on two cores cannot add 70%, scale-out efficiency: the machine's CPU per alarm
  (service processes, nats-server and any read-side process; not this driver) with two processes
  within 10% of one process's, i.e. no coordination cost. From the two it prints what a four-core
  machine would carry (`four_cores_predicted_per_s`, `predict`).

`--read-models elsewhere`: the workers run with DISPATCH_READ_MODELS=elsewhere and one
`dispatch projections run` keeps the shared read side, in a process of its own.

    python benchmarks/storm.py [--seconds 8] [--groups 30000] [--read-models here|elsewhere] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import nats
from common import (
    DEFAULT_POSTGRES,
    IN_FLIGHT,
    caller_of,
    cpu_seconds,
    drop_schema,
    pct,
    read_side_caught_up,
    roster,
    run_baseline,
    start_read_side,
)
from cpubudget import Profiler, budget, fold, table

from dispatch.channels.base import Delivered, Outcome
from dispatch.events.jobs import DeliveryJob, Target
from dispatch.events.model import Person
from dispatch.store.headers import install_header_parser
from dispatch.store.server import EmbeddedNats, free_port

RECIPIENTS = 9


class DoneChannel:
    """Counts handoffs per incident; announces `bench.done.<incident>` at the 9th."""

    name = "bench"

    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc
        self.seen: Counter[str] = Counter()

    def targets(self, recipient: Person, village: str | None = None) -> list[str]:
        return [recipient.phone]

    async def send(self, job: DeliveryJob, target: Target) -> Outcome:
        self.seen[job.incident_id] += 1
        if self.seen[job.incident_id] == RECIPIENTS:
            await self.nc.publish(f"bench.done.{job.incident_id}", b"")
        return Delivered()

    async def close(self) -> None:
        return None


async def worker(nats_url: str, data_dir: str, groups: int, database_url: str, read_models: str) -> int:
    from dispatch.bootstrap import Service
    from dispatch.observe import logging as dlog
    from dispatch.settings import Settings

    dlog.configure("json", "error")
    nc = await nats.connect(nats_url)
    settings = Settings(
        data_dir=Path(data_dir),
        http=f"127.0.0.1:{free_port()}",
        nats_urls=[nats_url],
        database_url=database_url,
        log_level="error",
        read_models=read_models,
    )
    service = Service(settings, channels=[DoneChannel(nc)])
    await service.start()
    if groups:
        await service.groups.import_roster(roster(groups))
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), stop.set)
    await stop.wait()
    await service.stop()
    await nc.close()
    return 0


async def spawn(
    nats_url: str, data_dir: Path, groups: int, database_url: str, read_models: str
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--worker",
        nats_url,
        str(data_dir),
        str(groups),
        database_url,
        read_models,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 600)
    if line.strip() != b"ready":
        raise RuntimeError(f"worker did not start: {line!r}")
    return proc


async def stop_workers(procs: list[asyncio.subprocess.Process]) -> None:
    """Close their stdin (they stop their service and exit), killing any that takes over a minute."""
    for proc in procs:
        if proc.stdin is not None:
            proc.stdin.close()
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()


async def storm(nc: nats.NATS, first: int, last: int, seconds: float) -> tuple[float, float, int]:
    """Closed loop with IN_FLIGHT alarms in flight, callers first..last-1; (alarms/s, p99 ms, count)."""
    waiting: dict[str, asyncio.Future[None]] = {}
    early: set[str] = set()

    async def on_done(msg: nats.aio.msg.Msg) -> None:
        incident = msg.subject.rsplit(".", 1)[1]
        fut = waiting.pop(incident, None)
        if fut is None:
            early.add(incident)
        elif not fut.done():
            fut.set_result(None)

    sub = await nc.subscribe("bench.done.*", cb=on_done)
    counter = [first]
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def one() -> None:
        while time.perf_counter() < stop_at and counter[0] < last:
            i = counter[0]
            counter[0] += 1
            started = time.perf_counter()
            body = json.dumps({"call_id": f"storm-{i}", "caller": caller_of(i)}).encode()
            reply = json.loads((await nc.request("dispatch.ingress.call", body, timeout=30)).data)
            incident = reply["incident_id"]
            if incident in early:
                early.discard(incident)
            else:
                fut = waiting[incident] = asyncio.get_running_loop().create_future()
                await asyncio.wait_for(fut, 30)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return len(latencies) / elapsed, pct(latencies, 0.99), len(latencies)


def predict(f: dict[str, float], cores: float = 4.0) -> dict[str, float]:
    """Scale-out efficiency and what `cores` cores would carry, from one run's figures.

    Efficiency: the machine's CPU per alarm with two processes over one's (1.0: a second process costs
    nothing to coordinate). A process's event loop runs on one core, so one process carries at most
    1 / (its own CPU per alarm); k processes carry k times that until the machine's cores run out at
    `cores` / (machine CPU per alarm with k processes). The four-core figure takes the two-process CPU
    per alarm for every k (the efficiency measured between one and two) and the best k."""
    worker_s = f["one_process_worker_cpu_ms_per_alarm"] / 1000
    machine_s = f["two_processes_machine_cpu_ms_per_alarm"] / 1000
    by_k = {k: min(k / worker_s, cores / machine_s) for k in range(1, int(cores) + 1)}
    best = max(by_k, key=lambda k: by_k[k])
    return {
        "scale_out_cpu_ratio": f["two_processes_machine_cpu_ms_per_alarm"] / f["one_process_machine_cpu_ms_per_alarm"],
        "four_cores_predicted_per_s": by_k[best],
        "four_cores_processes": float(best),
        "four_cores_predicted_vs_one_process": by_k[best] / f["one_process_per_s"],
    }


async def main() -> int:
    install_header_parser()  # as the service does (dispatch.store.headers)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--groups", type=int, default=30_000)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--read-models", choices=("here", "elsewhere"), default="here")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the one-process storm's worker with py-spy, keep the raw stacks in DIR and print its CPU per "
        "alarm by stage (benchmarks/cpubudget.py); both workers of the two-process storm are sampled into DIR too",
    )
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        url, data_dir, groups, database_url, read_models = args.worker
        return await worker(url, data_dir, int(groups), database_url, read_models)
    from dispatch.observe import logging as dlog

    dlog.configure("json", "error")
    workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-storm-"))
    figures: dict[str, float] = {"seconds": args.seconds, "in_flight": IN_FLIGHT}
    stages: dict[str, float] = {}
    print(f"read models: {args.read_models}")
    procs: list[asyncio.subprocess.Process] = []
    read_side: list[asyncio.subprocess.Process] = []
    server = EmbeddedNats(workdir / "nats")
    schema = f"bench_storm_{os.getpid()}"
    database_url = f"{args.postgres}?schema={schema}"
    try:
        base = await run_baseline(workdir / "raw", 1, 1, closed_seconds=args.seconds)
        figures["baseline_max_per_s"] = base.max_rate
        figures["baseline_cpu_ms_per_alarm"] = base.closed_cpu_ms_per_alarm
        await server.start()
        nc = await nats.connect(server.url, **server.auth.connect_kwargs())
        if args.read_models == "elsewhere":
            read_side.append(
                await start_read_side(
                    workdir / "projector", NATS_URL=server.authenticated_url, DATABASE_URL=database_url
                )
            )
        # the roster is imported by a process of its own, which then stops: the first worker starts as
        # the second does, with no key of anyone in its cache (the importer's would be warm for every
        # group and the second's cold, and a first touch of a group costs key reads: a warm-up, not
        # the coordination cost the comparison is after)
        importer = await spawn(server.authenticated_url, workdir / "w0", args.groups, database_url, args.read_models)
        await stop_workers([importer])
        procs.append(await spawn(server.authenticated_url, workdir / "w1", 0, database_url, args.read_models))
        if read_side:
            await read_side_caught_up(nc, database_url, read_side[0])
        half = args.groups // 2
        await storm(nc, 0, 200, 2.0)
        pids = [server.pid or 0, procs[0].pid, *(p.pid for p in read_side)]
        profiler = None
        if args.profile:
            await asyncio.to_thread(Path(args.profile).mkdir, parents=True, exist_ok=True)
            profiler = Profiler(procs[0].pid, Path(args.profile) / "storm-one-process.txt")
            await profiler.start()
        cpu0, wall0, machine0 = cpu_seconds(pids), time.perf_counter(), cpu_seconds(pids, this_process=False)
        worker0, nats0 = (
            cpu_seconds([procs[0].pid], this_process=False),
            cpu_seconds([server.pid or 0], this_process=False),
        )
        rate1, p99_1, n1 = await storm(nc, 200, half, args.seconds)
        figures["one_process_cores_busy"] = (cpu_seconds(pids) - cpu0) / (time.perf_counter() - wall0)
        figures["one_process_machine_cpu_ms_per_alarm"] = (
            (cpu_seconds(pids, this_process=False) - machine0) * 1000 / max(1, n1)
        )
        figures["one_process_worker_cpu_ms_per_alarm"] = (
            (cpu_seconds([procs[0].pid], this_process=False) - worker0) * 1000 / max(1, n1)
        )
        figures["one_process_nats_cpu_ms_per_alarm"] = (
            (cpu_seconds([server.pid or 0], this_process=False) - nats0) * 1000 / max(1, n1)
        )
        if profiler is not None:
            samples = fold(await profiler.stop())
            stages = budget(samples, figures["one_process_worker_cpu_ms_per_alarm"] * 1000)
        procs.append(await spawn(server.authenticated_url, workdir / "w2", 0, database_url, args.read_models))
        await storm(nc, half, half + 200, 2.0)
        pids.append(procs[1].pid)
        profilers = []
        if args.profile:
            for n, proc in enumerate(procs, 1):
                profilers.append(Profiler(proc.pid, Path(args.profile) / f"storm-two-processes-w{n}.txt"))
                await profilers[-1].start()
        own = [server.pid or 0, procs[0].pid, procs[1].pid]
        own0 = [cpu_seconds([pid], this_process=False) for pid in own]
        cpu0, wall0, machine0 = cpu_seconds(pids), time.perf_counter(), cpu_seconds(pids, this_process=False)
        rate2, p99_2, n2 = await storm(nc, half + 200, args.groups, args.seconds)
        figures["two_processes_cores_busy"] = (cpu_seconds(pids) - cpu0) / (time.perf_counter() - wall0)
        figures["two_processes_machine_cpu_ms_per_alarm"] = (
            (cpu_seconds(pids, this_process=False) - machine0) * 1000 / max(1, n2)
        )
        for name, pid, before in zip(("nats", "worker1", "worker2"), own, own0, strict=True):
            spent = cpu_seconds([pid], this_process=False) - before
            figures[f"two_processes_{name}_cpu_ms_per_alarm"] = spent * 1000 / max(1, n2)
        for profiler2 in profilers:
            await profiler2.stop()
        figures["cores"] = float(os.cpu_count() or 0)
        await nc.close()
        figures |= {
            "one_process_per_s": rate1,
            "one_process_p99_ms": p99_1,
            "one_process_alarms": n1,
            "two_processes_per_s": rate2,
            "two_processes_p99_ms": p99_2,
            "two_processes_alarms": n2,
        }
        figures["one_vs_baseline"] = rate1 / base.max_rate
        figures["two_vs_one"] = rate2 / rate1
        figures |= predict(figures)
    finally:
        for proc in read_side:
            proc.terminate()
            await proc.wait()
        await stop_workers(procs)
        await server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        await asyncio.to_thread(drop_schema, args.postgres, schema)
    print(f"\nstorm: closed loop, {IN_FLIGHT} alarms in flight, {args.seconds:.0f} s, fsync always")
    for key, value in figures.items():
        print(f"  {key:<36}{value:>12,.2f}")
    if stages:
        print()
        print(
            table(
                {"storm: one worker": stages},
                {
                    "worker, total": figures["one_process_worker_cpu_ms_per_alarm"] * 1000,
                    "its nats-server": figures["one_process_nats_cpu_ms_per_alarm"] * 1000,
                    "raw baseline per alarm (process + nats-server)": figures["baseline_cpu_ms_per_alarm"] * 1000,
                },
            )
        )
    if args.json:
        out = {**figures, "worker_cpu_us_by_stage": stages} if stages else figures
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
