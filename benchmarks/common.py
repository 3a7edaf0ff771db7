"""What the benchmarks share: the ten-number roster, percentiles, load shapes and the raw baseline.

Also what runs the service under load: `start_serve` (a `dispatch serve` process, once /readyz says
200) and `Receiver`, the webhook receiver in a second process.

The baseline is plain nats-py on the same kind of server and durability as the service: publish
the alarm to a JetStream file stream, a push consumer, 9 core publishes, 9 subscribers; latency
from the stored alarm's server timestamp to the 9th subscriber's receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import nats
from nats.js.api import StreamConfig

from dispatch.store.server import EmbeddedNats, free_port

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
    cpu_ms_per_alarm: float = 0.0  # steady phase: this process (publisher, consumer, subscribers) + its nats-server
    closed_cpu_ms_per_alarm: float = 0.0  # the same over the closed loop


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

        cpu0 = cpu_seconds([server.pid or 0])
        latencies = await steady(launch, rate, seconds)
        cpu = (cpu_seconds([server.pid or 0]) - cpu0) * 1000 / len(latencies)
        max_rate, closed_cpu = 0.0, 0.0
        if closed_seconds:
            cpu0, wall0 = cpu_seconds([server.pid or 0]), time.perf_counter()
            max_rate = await closed_loop(launch, len(latencies), closed_seconds)
            alarms = max_rate * (time.perf_counter() - wall0)
            closed_cpu = (cpu_seconds([server.pid or 0]) - cpu0) * 1000 / max(1.0, alarms)
        return Result(pct(latencies, 0.5), pct(latencies, 0.99), len(latencies), max_rate, cpu, closed_cpu)
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


def start_serve(
    data_dir: Path,
    http_port: int,
    env: dict[str, str],
    *,
    command: list[str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    interval: float = 0.1,
) -> subprocess.Popen[bytes]:
    """`dispatch serve` (or `command`) on `data_dir` and 127.0.0.1:`http_port` with `env` added to
    warning-level JSON logs (appended to data_dir/serve.log), once its /readyz answers 200."""
    full = {
        **os.environ,
        "DISPATCH_DATA_DIR": str(data_dir),
        "DISPATCH_HTTP": f"127.0.0.1:{http_port}",
        "DISPATCH_LOG_LEVEL": "warning",
        "DISPATCH_LOG_FORMAT": "json",
        **env,
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "serve.log").open("ab")
    argv = command or [sys.executable, "-m", "dispatch", "serve"]
    proc = subprocess.Popen(argv, env=full, stdout=log, stderr=log, cwd=cwd)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dispatch serve exited; see {data_dir / 'serve.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    proc.kill()
    raise RuntimeError("dispatch serve not ready")


# The receiver: a bare asyncio HTTP/1.1 server in its own process (the load generator's event loop
# never shares a GIL with it). It answers 200 at once and prints one line when an incident's alarm
# has reached all `need` recipients (A incident at), and one per escalation webhook (E tier ...;
# tier 2 is the command centre's, on /centre).
RECEIVER = r"""
import asyncio, json, sys, time
from collections import Counter
need = int(sys.argv[2])
alarms = Counter()
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
out = sys.stdout

class Hook(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        buf = self.buf + data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = buf[:end]
            low = head.lower()
            length = 0
            if (i := low.find(b"content-length:")) >= 0:
                j = low.find(b"\r\n", i)
                length = int(low[i + 15 : j if j >= 0 else len(low)])
            if len(buf) < end + 4 + length:
                break
            body, buf = buf[end + 4 : end + 4 + length], buf[end + 4 + length :]
            now = time.time()
            self.transport.write(OK)
            path = head.split(b" ", 2)[1].decode()
            msg = json.loads(body)
            incident = msg["incident_id"]
            if msg["type"] == "alarm":
                alarms[incident] += 1
                if alarms[incident] == need:
                    out.write(f"A {incident} {now}\n")
            elif msg["type"] == "escalation":
                tier = 2 if path == "/centre" else 1
                key, village, raised = msg["idempotency_key"], msg["village"], msg["raised_at"]
                out.write(f"E {tier} {incident} {msg['round']} {key} {village} {raised} {now}\n")
        self.buf = buf
        out.flush()

async def main():
    server = await asyncio.get_running_loop().create_server(Hook, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    out.write("ready\n"); out.flush()
    await server.serve_forever()

asyncio.run(main())
"""


@dataclass
class Hit:
    """One escalation webhook as the receiver got it."""

    incident: str
    tier: int
    round: int
    key: str
    village: str
    raised_at: float
    at: float


class Receiver:
    """The benchmarks' webhook receiver (`RECEIVER` in a subprocess): when each alarm had reached its
    nine recipients, and every escalation webhook (`hits`)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: list[Hit] = []
        self.alarms: dict[str, float] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[float]] = {}
        self.changed = asyncio.Event()

    @property
    def hook(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def alarm_rung(self, incident: str) -> float:
        """When the incident's alarm had reached all nine recipients (the receiver's clock)."""
        if incident in self.alarms:
            return self.alarms.pop(incident)
        fut = self._waiting[incident] = asyncio.get_running_loop().create_future()
        return await fut

    async def until(self, check: Callable[[], bool], give_up: float) -> None:
        """Until `check()` holds after a webhook arrived, or the wall clock passes `give_up`."""
        while not check() and time.time() < give_up:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.01, give_up - time.time()))

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RECEIVER, str(self.port), str(RECIPIENTS), stdout=asyncio.subprocess.PIPE
        )
        assert self.proc.stdout is not None
        assert (await self.proc.stdout.readline()).strip() == b"ready"
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            parts = line.decode().split()
            if parts[0] == "A":
                fut = self._waiting.pop(parts[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(float(parts[2]))
                else:
                    self.alarms[parts[1]] = float(parts[2])
            else:
                _, tier, incident, round_, key, village, raised, at = parts
                raised_at = datetime.fromisoformat(raised.replace("Z", "+00:00")).timestamp()
                self.hits.append(Hit(incident, int(tier), int(round_), key, village, raised_at, float(at)))
            self.changed.set()

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
