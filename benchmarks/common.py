"""What the benchmarks share: the ten-number roster, percentiles, load shapes and the raw baseline.

The baseline is plain nats-py on the same kind of server and durability as the service: publish
the alarm to a JetStream file stream, a push consumer, 9 core publishes, 9 subscribers; latency
from the stored alarm's server timestamp to the 9th subscriber's receipt.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.js.api import StreamConfig

from dispatch.store.server import EmbeddedNats

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
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


def cpu_seconds(pids: list[int], *, this_process: bool = True) -> float:
    """User + system CPU seconds of these processes so far (and of this one, unless told not)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(os.times()[:2]) if this_process else 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


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


async def run_baseline(workdir: Path, rate: float, seconds: float, closed_seconds: float = 5.0) -> Result:
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
        max_rate = await closed_loop(launch, len(latencies), closed_seconds) if closed_seconds else 0.0
        return Result(pct(latencies, 0.5), pct(latencies, 0.99), len(latencies), max_rate)
    finally:
        await nc.close()
        await server.stop()


def drop_schema(url: str, schema: str) -> None:
    """Drop a benchmark's PostgreSQL schema and everything in it."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def start_read_side(data_dir: Path, **env: str) -> asyncio.subprocess.Process:
    """`dispatch projections run` (DISPATCH_READ_MODELS=elsewhere's worker) on `data_dir`; `env` adds
    DISPATCH_* settings (NATS_URL, DATABASE_URL); without them it joins the service running there."""
    settings = {f"DISPATCH_{k}": v for k, v in env.items()}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatch",
        "projections",
        "run",
        env={**os.environ, **settings, "DISPATCH_DATA_DIR": str(data_dir), "DISPATCH_LOG_LEVEL": "error"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def read_side_caught_up(
    nc: nats.NATS, database_url: str, projector: asyncio.subprocess.Process, timeout: float = 600
) -> None:
    """Until every read model's checkpoint has reached the log's last matching message: the storm
    measures alarms, not the worker catching up on the roster import."""
    from dispatch.projections.registry import all_projections
    from dispatch.projections.runner import checkpoint, last_matching
    from dispatch.projections.sql import Database

    db = Database(database_url)

    def position(name: str) -> int:
        try:
            return checkpoint(db.thread_connection(), name)
        except Exception:  # the worker has not made its tables yet
            db.drop_thread_connection()
            return 0

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if projector.returncode is not None:
            raise RuntimeError(f"dispatch projections run exited ({projector.returncode})")
        behind = 0
        for projection in all_projections():
            head = await last_matching(nc, projection.filter_subjects)
            done = await asyncio.to_thread(position, projection.name)
            behind += max(0, head - done)
        if not behind:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the read side did not catch up")
