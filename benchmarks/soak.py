"""Soak: a steady county load on `dispatch serve` for an hour; does anything grow?

In one run, on one machine (not part of the test suite; `--minutes` sets the length):

- `dispatch serve` as a subprocess on its embedded defaults (own nats-server, fsync always, SQLite
  read models), a duty desk, `DISPATCH_WEBHOOK_URLS` and `DISPATCH_COMMAND_CENTRE` pointing at a
  receiver in a second subprocess (benchmarks/e2e.py's bare asyncio receiver);
- `--rate` alarms/s (5: a county's worst evening, sustained), each from one of `--groups`
  10-number groups in turn (a group's next call comes long after its last incident closed); each
  alarm is answered as on the phones: the officer and the leader accept 1 s after its 9th webhook,
  the officer arrives 2 s later and resolves 2 s after that; one alarm in `--unanswered-every` is
  left alone until both escalation tiers have fired (ack deadline 10 s, county 20 s) and is then
  resolved at 30 s, so timers and escalations run all along;
- every minute, one row: RSS and open file descriptors of serve and of its nats-server (from
  /proc), the service's event-loop lag over that minute (`dispatch_event_loop_lag_seconds` from
  /metrics: mean and the bucket bound of its p99 and max), each read model's lag (the log's last
  matching stream sequence minus the read model's checkpoint, read from NATS and the SQLite file
  at the minute mark), the alarm path's p50 / p99 (POST /v1/calls -> 9th webhook at the receiver),
  serve's CPU share, the data directory's size and the errors (each kind with the minutes it came in);
- a request refused with 503 (the log did not answer in time) is an error, and is retried after its
  Retry-After as the phones' gateway and the console do, with the same call id or Idempotency-Key, so
  that no incident stays open because its resolve was refused once; a call that joins its group's
  incident still open (status `merged`) is an error too, and that incident is resolved then;
- at the end, for each column, the least-squares slope over the last half of the run, per hour:
  flat is the goal (the log and the read models grow with the alarms by design; the data
  directory's and the subjects' slopes are shown for that reason, not as leaks: the nats-server
  keeps an index entry per subject of the log, kept for ever, and of the timers' stream, 7 days);
  the machine's 1-minute load average beside each row, since a shared machine's other work shows
  in the latencies and the loop lag;
- what grows, when RSS does: `--census` (cheap) has serve count its live objects by type (the
  garbage collector's), pymalloc's blocks and glibc's heap at minute 1 and every `--snapshot-every`
  minutes, and prints the types that grew since minute 1 per alarm; `--tracemalloc` (costly: keep
  the rate low) also starts tracemalloc at minute 1 (`--frames` deep) and prints the tracebacks whose
  live allocations grew most since then; `--cache-incidents N` shrinks the incidents row cache and
  `--cached-incidents N` the deciding cache (`IncidentCache`), `--keys-memo N` the keyring's memos of
  envelopes (`store/keys.py` MEMO), so that they are full early and what grows beside them, or goes
  wrong once they forget, shows; the census also gives the keyring's memos' sizes;
- the nats-server's side: `benchmarks/nats_memory.py DATA_DIR` on a kept `--workdir` starts a fresh
  server on the same store and prints what holding it costs (RSS, Go heap, subjects).

    python benchmarks/soak.py [--minutes 60] [--rate 5] [--groups 1500] [--unanswered-every 50]
                              [--census] [--tracemalloc [--frames 12]] [--snapshot-every 5]
                              [--cache-incidents N] [--cached-incidents N] [--keys-memo N] [--workdir DIR]
                              [--markdown FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import Receiver, caller_of, cpu_seconds, pct, roster, start_serve
from prometheus_client.parser import text_string_to_metric_families

from dispatch.channels.http import HttpPoster
from dispatch.projections.registry import all_projections
from dispatch.projections.runner import checkpoint, last_matching
from dispatch.projections.sql import Database
from dispatch.store.connect import connect
from dispatch.store.server import free_port, running_auth, running_url

DUTY_DESK = "+8673184512345"
ACK_DEADLINE_S = 10
ESCALATE_AFTER_S = 20
UNANSWERED_RESOLVE_S = 30
RETRIES = 5

# `dispatch serve` watched (--census, --tracemalloc): every SIGUSR1 writes a census into SOAK_SNAPSHOTS (live
# objects by type from the garbage collector, pymalloc's allocated blocks, glibc's heap in use and free); with
# SOAK_TRACE, the first SIGUSR1 also starts tracemalloc (after the start-up and the first minute, so that only
# what is allocated under load is traced) and every one dumps a snapshot; SOAK_CACHE_INCIDENTS, if set, shrinks
# the incidents row cache, SOAK_CACHED_INCIDENTS the deciding cache (`IncidentCache`), so that they are full
# early and what grows beside them, or what goes wrong once they forget, shows
WATCHED_SERVE = """
import collections, ctypes, gc, json, os, runpy, signal, sys, time, tracemalloc
if os.environ.get("SOAK_CACHE_INCIDENTS"):
    import dispatch.projections.incidents as incidents
    incidents.CACHE_INCIDENTS = int(os.environ["SOAK_CACHE_INCIDENTS"])
if os.environ.get("SOAK_KEYS_MEMO"):
    import dispatch.store.keys as keys
    keys.MEMO = int(os.environ["SOAK_KEYS_MEMO"])
if os.environ.get("SOAK_CACHED_INCIDENTS"):
    import dispatch.handlers.aggregates as aggregates
    aggregates.IncidentCache.__init__.__defaults__ = (int(os.environ["SOAK_CACHED_INCIDENTS"]),)
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
try:
    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = MallInfo2
except (OSError, AttributeError):
    mallinfo2 = None
def dump(*_):
    stamp = time.time_ns()
    folder = os.environ["SOAK_SNAPSHOTS"]
    types = collections.Counter(type(o).__module__ + "." + type(o).__qualname__ for o in gc.get_objects())
    census = {"blocks": sys.getallocatedblocks(), "types": dict(types.most_common(400))}
    import dispatch.store.keys as keys
    for ring in keys._ACTIVE[-1:]:
        census["keyring"] = {n: len(getattr(ring, n)) for n in ("_plain", "_envelopes", "_ciphers", "_kids", "_keys")}
    if mallinfo2 is not None:
        info = mallinfo2()
        census["malloc_in_use"], census["malloc_free"] = info.uordblks + info.hblkhd, info.fordblks
    with open(os.path.join(folder, f"census-{stamp}.json.part"), "w") as out:
        json.dump(census, out)
    os.rename(os.path.join(folder, f"census-{stamp}.json.part"), os.path.join(folder, f"census-{stamp}.json"))
    if os.environ.get("SOAK_TRACE"):
        if not tracemalloc.is_tracing():
            tracemalloc.start(int(os.environ.get("SOAK_FRAMES", "12")))
        path = os.path.join(folder, f"snap-{stamp}.pickle")
        tracemalloc.take_snapshot().dump(path + ".part")
        os.rename(path + ".part", path)
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["dispatch", "serve"]
runpy.run_module("dispatch", run_name="__main__", alter_sys=True)
"""


def start_traced_serve(
    data_dir: Path, http_port: int, hook: str, traced: bool = False, trace_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The soak's service: webhooks and the command centre on the receiver, short deadlines, and with
    `traced` watched (WATCHED_SERVE: SIGUSR1 writes a census, and a tracemalloc snapshot, beside the data
    directory)."""
    env = {
        **(trace_env or {}),
        "SOAK_SNAPSHOTS": str(data_dir.parent),
        "DISPATCH_WEBHOOK_URLS": hook,
        "DISPATCH_WEBHOOK_SECRET": "soak-secret",
        "DISPATCH_COMMAND_CENTRE": hook.replace("/hook", "/centre"),
        "DISPATCH_DUTY_DESK": DUTY_DESK,
        "DISPATCH_ACK_DEADLINE": str(ACK_DEADLINE_S),
        "DISPATCH_ESCALATE_AFTER": str(ESCALATE_AFTER_S),
    }
    command = [sys.executable, "-c", WATCHED_SERVE] if traced else None
    return start_serve(data_dir, http_port, env, command=command)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> dict[str, int]:
    """Open descriptors by what they point at (socket, pipe, anon_inode, or the file's directory)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else str(Path(target).parent)
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def tree_mb(path: Path) -> float:
    """Bytes of the files under `path`, in MB; the nats-server makes and removes files meanwhile."""
    total = 0
    for folder, _, files in os.walk(path):  # os.walk skips a directory that vanished under it
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total / 1e6


@dataclass
class LoopLag:
    """The histogram's cumulative buckets, count and sum at one scrape."""

    buckets: dict[float, float] = field(default_factory=dict)
    count: float = 0.0
    total: float = 0.0

    @classmethod
    def parse(cls, text: str) -> LoopLag:
        lag = cls()
        for family in text_string_to_metric_families(text):
            if family.name != "dispatch_event_loop_lag_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    lag.buckets[float(sample.labels["le"])] = sample.value
                elif sample.name.endswith("_count"):
                    lag.count = sample.value
                elif sample.name.endswith("_sum"):
                    lag.total = sample.value
        return lag

    def since(self, before: LoopLag) -> tuple[float, float, float]:
        """(mean, p99 bucket bound, max bucket bound) in ms of the samples between `before` and this."""
        n = self.count - before.count
        if n <= 0:
            return math.nan, math.nan, math.nan
        mean = (self.total - before.total) / n * 1000
        bounds = sorted(self.buckets)
        delta = [self.buckets[b] - before.buckets.get(b, 0.0) for b in bounds]

        def bound(q: float) -> float:
            for b, cumulative in zip(bounds, delta, strict=True):
                if cumulative >= q * n:
                    return b * 1000
            return math.inf

        return mean, bound(0.99), bound(1.0)


@dataclass
class Row:
    minute: int
    alarms: int
    errors: int
    p50_ms: float
    p99_ms: float
    serve_rss_mb: float
    serve_fds: int
    serve_cpu: float
    nats_rss_mb: float
    nats_fds: int
    loop_lag_mean_ms: float
    loop_lag_p99_ms: float
    loop_lag_max_ms: float
    read_lag: dict[str, int]
    open_incidents: float
    data_mb: float
    load1: float = math.nan
    log_subjects: int = 0
    serve_fd_kinds: dict[str, int] = field(default_factory=dict)
    nats_fd_kinds: dict[str, int] = field(default_factory=dict)


COLUMNS: list[tuple[str, str]] = [
    ("serve_rss_mb", "serve RSS MB"),
    ("serve_fds", "serve fds"),
    ("nats_rss_mb", "nats RSS MB"),
    ("nats_fds", "nats fds"),
    ("loop_lag_mean_ms", "loop lag mean ms"),
    ("loop_lag_p99_ms", "loop lag p99 ms"),
    ("read_lag_total", "read lag events"),
    ("p99_ms", "alarm p99 ms"),
    ("serve_cpu", "serve CPU"),
    ("open_incidents", "open incidents"),
    ("data_mb", "data dir MB"),
    ("log_subjects", "log + timer subjects"),
]


def column(row: Row, name: str) -> float:
    if name == "read_lag_total":
        return float(sum(row.read_lag.values()))
    return float(getattr(row, name))


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, value) points, per hour."""
    points = [(x, y) for x, y in points if math.isfinite(y)]
    if len(points) < 2:
        return math.nan
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var * 60 if var else math.nan


def short_path(filename: str) -> str:
    """A traced frame's file, from the package down (`dispatch/...`, `nats/...`, `asyncio/...`)."""
    for marker in ("/site-packages/", "/lib/python3", "/work/"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" and "/" in tail else tail
    return filename


def growth(first: tracemalloc.Snapshot, last: tracemalloc.Snapshot, alarms: int, top: int = 15) -> list[str]:
    """The `top` tracebacks whose live allocations grew most from `first` to `last`, per alarm in between."""
    lines = []
    stats = [s for s in last.compare_to(first, "traceback") if s.size_diff > 0][:top]
    total = sum(s.size_diff for s in last.compare_to(first, "filename"))
    lines.append(f"  all traced: {total / 1024:+.0f} KiB, {total / max(1, alarms):+.0f} B per alarm")
    for stat in stats:
        frames = [f"{short_path(f.filename)}:{f.lineno}" for f in reversed(stat.traceback)]  # most recent first
        lines.append(
            f"  {stat.size_diff / 1024:+8.0f} KiB {stat.count_diff:+7d} blocks "
            f"{stat.size_diff / max(1, alarms):+7.0f} B/alarm  " + " < ".join(frames[:8])
        )
    return lines


def census_growth(first: dict[str, Any], last: dict[str, Any], alarms: int, top: int = 15) -> list[str]:
    """Live objects by type, pymalloc's blocks and glibc's heap: what grew from `first` to `last`, per alarm."""
    per = max(1, alarms)
    blocks = last["blocks"] - first["blocks"]
    lines = [f"  pymalloc blocks {blocks:+d} ({blocks / per:+.1f}/alarm)"]
    if "malloc_in_use" in first and "malloc_in_use" in last:
        used = last["malloc_in_use"] - first["malloc_in_use"]
        free = last["malloc_free"] - first["malloc_free"]
        lines.append(
            f"  glibc heap in use {used / 1e6:+.1f} MB ({used / per:+.0f} B/alarm), "
            f"free in the heap {free / 1e6:+.1f} MB"
        )
    if "keyring" in last:
        lines.append("  keyring now: " + ", ".join(f"{name} {n}" for name, n in last["keyring"].items()))
    grown = sorted(((n - first["types"].get(t, 0), t) for t, n in last["types"].items()), reverse=True)[:top]
    for diff, name in grown:
        if diff > 0:
            lines.append(f"  {diff:+8d} {diff / per:+7.2f}/alarm  {name}")
    return lines


def fmt(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.data_dir = workdir / "svc"
        self.receiver = Receiver()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = HttpPoster(timeout=60, max_connections=128)
        self.headers: dict[str, str] = {}
        self.latencies: list[float] = []
        self.alarms = 0
        self.errors = 0
        self.error_samples: list[str] = []
        # each kind of error (ids taken out) and the minutes it happened in: a periodic kind shows
        self.error_kinds: dict[str, list[int]] = {}
        self.minute = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.rows: list[Row] = []
        self.snapshots: list[tuple[int, Path, Path]] = []

    def error(self, what: str) -> None:
        self.errors += 1
        kind = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "{id}", what)[:200]
        kind = re.sub(r"^(call|alarm) [0-9]+", r"\1 {i}", kind)
        new_kind = kind not in self.error_kinds
        minutes = self.error_kinds.setdefault(kind, [])
        if not minutes or minutes[-1] != self.minute:
            minutes.append(self.minute)
        if len(self.error_samples) < 20 or new_kind:
            self.error_samples.append(what)
            print(f"error: {what}", file=sys.stderr, flush=True)

    async def post(self, path: str, body: dict[str, object], key: str | None = None) -> dict[str, object] | None:
        """POST as the phones' gateway and the console do: a 503 (the log did not answer in time) is
        counted as an error, then retried after its Retry-After, at most RETRIES times; a retried answer
        that finds the incident closed was stored by the refused try (the refusal came after it)."""
        headers = {**self.headers, "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        for attempt in range(RETRIES + 1):
            answer = await self.http.post(f"{self.base}{path}", json.dumps(body).encode(), headers)
            if answer.status == 503 and attempt < RETRIES:
                self.error(f"{path}: {answer.status} {answer.body[:300]!r}, retried")
                await asyncio.sleep(float(answer.retry_after or 1))
                continue
            if answer.status == 409 and attempt > 0 and b"already" in answer.body:
                return {}
            if answer.status >= 300:
                self.error(f"{path}: {answer.status} {answer.body[:300]!r}")
                return None
            result: dict[str, object] = answer.json()
            return result
        return None

    async def alarm(self, i: int) -> None:
        group = i % self.args.groups
        phone = caller_of(group)[:-1]  # the group's numbers differ in the last digit: 0 leader, 1 officer
        leader, officer = f"{phone}0", f"{phone}1"
        sent = time.time()
        try:
            call = await self.post("/v1/calls", {"call_id": f"soak-{i}", "caller": caller_of(group)})
            if call is None:
                return
            incident = str(call["incident_id"])
            path = f"/v1/incidents/{incident}/responses"
            if call.get("status") != "raised":
                # the group's last incident is still open (its resolve was never stored): the call joined
                # it, as it must, and rings no new alarm; close it so that the group's next call raises
                self.error(f"call {i}: {call.get('status')} into an incident left open")
                await self.post(path, {"responder": officer, "action": "resolve", "category": "help"}, f"r{i}")
                return
            arrived = await asyncio.wait_for(self.receiver.alarm_rung(incident), 60)
            self.latencies.append((arrived - sent) * 1000)
            if self.args.unanswered_every and i % self.args.unanswered_every == 0:
                await asyncio.sleep(max(0.0, sent + UNANSWERED_RESOLVE_S - time.time()))
            else:
                await asyncio.sleep(1)
                for who in (officer, leader):
                    await self.post(path, {"responder": who, "action": "accept"}, f"a{i}{who}")
                await asyncio.sleep(2)
                await self.post(path, {"responder": officer, "action": "arrived"}, f"o{i}")
                await asyncio.sleep(2)
            await self.post(path, {"responder": officer, "action": "resolve", "category": "help"}, f"r{i}")
        except Exception as exc:
            self.error(f"alarm {i}: {type(exc).__name__} {exc}")

    async def subjects(self, nc: object) -> int:
        """Subjects held by the log and the timers' stream (the nats-server keeps an index entry for each)."""
        total = 0
        for stream in ("DISPATCH_EVENTS", "DISPATCH_TIMERS"):
            reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)  # type: ignore[attr-defined]
            total += int(json.loads(reply.data)["state"].get("num_subjects") or 0)
        return total

    async def snapshot(self, proc: subprocess.Popen[bytes], alarms: int) -> None:
        """Ask the watched serve for a census (and a tracemalloc snapshot); from the second on, print what grew
        since the first."""
        pattern = "snap-*.pickle" if self.args.tracemalloc else "census-*.json"
        before = set(self.workdir.glob(pattern))
        proc.send_signal(signal.SIGUSR1)
        for _ in range(1200):
            if new := set(self.workdir.glob(pattern)) - before:
                break
            await asyncio.sleep(0.1)
        else:
            print("census: none written", flush=True)
            return
        census = max(self.workdir.glob("census-*.json"))
        self.snapshots.append((alarms, max(new), census))
        if len(self.snapshots) < 2:
            return
        (a0, p0, c0), (a1, p1, c1) = self.snapshots[0], self.snapshots[-1]
        first_census, last_census = (json.loads(c.read_text()) for c in (c0, c1))
        print(f"census: what grew over the last {a1 - a0} alarms", flush=True)
        for line in census_growth(first_census, last_census, a1 - a0):
            print(line, flush=True)
        if self.args.tracemalloc:
            first, last = await asyncio.to_thread(lambda: [tracemalloc.Snapshot.load(str(p)) for p in (p0, p1)])
            print(f"tracemalloc: what grew over the last {a1 - a0} alarms, by traceback", flush=True)
            for line in growth(first, last, a1 - a0):
                print(line, flush=True)

    async def read_lag(self, nc: object, db: Database) -> dict[str, int]:
        def position(name: str) -> int:
            # a fresh connection each time: one kept open may keep reading an old snapshot of the file
            try:
                return checkpoint(db.thread_connection(), name)
            except Exception:
                return -1
            finally:
                db.drop_thread_connection()

        lags: dict[str, int] = {}
        for projection in all_projections():
            # the checkpoint first: the log only moves on, so the lag is never understated
            done = await asyncio.to_thread(position, projection.name)
            head = await last_matching(nc, projection.filter_subjects)  # type: ignore[arg-type]
            lags[projection.name] = head - done if done >= 0 else -1
        return lags

    async def run(self) -> dict[str, object]:
        args = self.args
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)  # SIGTERM: stop serve too
        await self.receiver.start()
        hook = self.receiver.hook
        trace_env = {"SOAK_FRAMES": str(args.frames)}
        if args.tracemalloc:
            trace_env["SOAK_TRACE"] = "1"
        if args.cache_incidents:
            trace_env["SOAK_CACHE_INCIDENTS"] = str(args.cache_incidents)
        if args.cached_incidents:
            trace_env["SOAK_CACHED_INCIDENTS"] = str(args.cached_incidents)
        if args.keys_memo:
            trace_env["SOAK_KEYS_MEMO"] = str(args.keys_memo)
        shrunk = args.cache_incidents or args.cached_incidents or args.keys_memo
        watched = args.tracemalloc or args.census or bool(shrunk)
        try:
            proc = await asyncio.to_thread(start_traced_serve, self.data_dir, self.port, hook, watched, trace_env)
        except BaseException:
            await self.receiver.stop()
            raise
        nats_pid = int((self.data_dir / "nats" / "pid").read_text())
        nc = await connect([running_url(self.data_dir) or ""], running_auth(self.data_dir))
        db = Database(f"sqlite:///{self.data_dir / 'dispatch.db'}")
        scrape = httpx.AsyncClient(base_url=self.base, timeout=30)
        try:
            token = (self.data_dir / "admin.token").read_text().strip()
            self.headers = {"Authorization": f"Bearer {token}"}
            scrape.headers["Authorization"] = f"Bearer {token}"
            answer = await self.http.post(
                f"{self.base}/v1/groups/import",
                roster(args.groups).encode(),
                {**self.headers, "Content-Type": "text/csv"},
            )
            if answer.status != 200:
                raise RuntimeError(f"import: {answer.status} {answer.body[:500]!r}")
            print(
                f"soak: {args.minutes} min at {args.rate} alarms/s, {args.groups} groups, serve pid {proc.pid}, "
                f"nats pid {nats_pid}, data {self.data_dir}",
                flush=True,
            )
            header = (
                f"{'min':>4} {'alarms':>6} {'err':>4} {'p50ms':>7} {'p99ms':>7} {'srvRSS':>7} {'srvfd':>5} "
                f"{'cpu':>5} {'natsRSS':>7} {'natsfd':>6} {'lag_mean':>8} {'lag_p99':>7} {'lag_max':>7} "
                f"{'readlag':>12} {'open':>5} {'dataMB':>7} {'load':>5} {'subjects':>8}"
            )
            print(header, flush=True)
            lag_before = LoopLag.parse((await scrape.get("/metrics")).text)
            cpu_before = cpu_seconds([proc.pid], this_process=False)
            interval = 1.0 / args.rate
            start = time.perf_counter()
            i = 0
            for minute in range(1, args.minutes + 1):
                self.minute = minute
                minute_end = start + minute * 60
                self.latencies, self.alarms, errors_before = [], 0, self.errors
                while (at := start + i * interval) < minute_end:
                    delay = at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    task = asyncio.create_task(self.alarm(i))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    i += 1
                    self.alarms += 1
                await asyncio.sleep(max(0.0, minute_end - time.perf_counter()))
                if proc.poll() is not None:
                    raise RuntimeError(f"dispatch serve exited {proc.returncode}; see {self.data_dir / 'serve.log'}")
                metrics = (await scrape.get("/metrics")).text
                lag_now = LoopLag.parse(metrics)
                mean, p99, worst = lag_now.since(lag_before)
                lag_before = lag_now
                cpu_now = cpu_seconds([proc.pid], this_process=False)
                open_incidents = math.nan
                for family in text_string_to_metric_families(metrics):
                    if family.name == "dispatch_incidents_open":
                        open_incidents = family.samples[0].value
                row = Row(
                    minute=minute,
                    alarms=self.alarms,
                    errors=self.errors - errors_before,
                    p50_ms=pct(self.latencies, 0.5) if self.latencies else math.nan,
                    p99_ms=pct(self.latencies, 0.99) if self.latencies else math.nan,
                    serve_rss_mb=rss_mb(proc.pid),
                    serve_fds=open_fds(proc.pid),
                    serve_cpu=(cpu_now - cpu_before) / 60,
                    nats_rss_mb=rss_mb(nats_pid),
                    nats_fds=open_fds(nats_pid),
                    loop_lag_mean_ms=mean,
                    loop_lag_p99_ms=p99,
                    loop_lag_max_ms=worst,
                    read_lag=await self.read_lag(nc, db),
                    open_incidents=open_incidents,
                    data_mb=await asyncio.to_thread(tree_mb, self.data_dir),
                    load1=os.getloadavg()[0],
                    log_subjects=await self.subjects(nc),
                    serve_fd_kinds=fd_kinds(proc.pid),
                    nats_fd_kinds=fd_kinds(nats_pid),
                )
                cpu_before = cpu_now
                self.rows.append(row)
                if args.json:  # every minute, so the rows so far survive a run that dies
                    text = json.dumps(self.summary(), indent=2, default=str)
                    await asyncio.to_thread(Path(args.json).write_text, text)
                snap_due = (minute - 1) % args.snapshot_every == 0 or minute == args.minutes
                if (args.tracemalloc or args.census) and snap_due:
                    await self.snapshot(proc, i)
                lags = "/".join(str(v) for v in row.read_lag.values())
                print(
                    f"{minute:>4} {row.alarms:>6} {row.errors:>4} {fmt(row.p50_ms):>7} {fmt(row.p99_ms):>7} "
                    f"{row.serve_rss_mb:>7.1f} {row.serve_fds:>5} {row.serve_cpu:>5.2f} {row.nats_rss_mb:>7.1f} "
                    f"{row.nats_fds:>6} {fmt(row.loop_lag_mean_ms):>8} {fmt(row.loop_lag_p99_ms):>7} "
                    f"{fmt(row.loop_lag_max_ms):>7} {lags:>12} {fmt(row.open_incidents):>5} {row.data_mb:>7.1f} "
                    f"{row.load1:>5.1f} {row.log_subjects:>8}",
                    flush=True,
                )
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=UNANSWERED_RESOLVE_S + 90)
        finally:
            await scrape.aclose()
            await self.http.close()
            await nc.close()
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 60)
            await self.receiver.stop()
        return self.summary()

    def summary(self) -> dict[str, object]:
        half = [r for r in self.rows if r.minute > len(self.rows) / 2]
        slopes = {name: slope_per_hour([(r.minute, column(r, name)) for r in half]) for name, _ in COLUMNS}
        return {
            "minutes": self.args.minutes,
            "rate": self.args.rate,
            "groups": self.args.groups,
            "errors": sum(r.errors for r in self.rows),
            "error_samples": self.error_samples,
            "error_kinds": self.error_kinds,
            "rows": [asdict(r) for r in self.rows],
            "slope_per_hour_last_half": slopes,
        }


def markdown(summary: dict[str, object], every: int) -> str:
    rows = [Row(**r) for r in summary["rows"]]  # type: ignore[attr-defined]
    lines = [
        "| minute | alarms | errors | p50 / p99 ms | serve RSS MB | serve fds | serve CPU | nats RSS MB | nats fds "
        "| loop lag mean / p99 / max ms | read lag (events) | open | data MB | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.minute % every and r.minute not in (1, len(rows)):
            continue
        lags = " / ".join(str(v) for v in r.read_lag.values())
        lines.append(
            f"| {r.minute} | {r.alarms} | {r.errors} | {fmt(r.p50_ms)} / {fmt(r.p99_ms)} | {r.serve_rss_mb:.1f} "
            f"| {r.serve_fds} | {r.serve_cpu:.2f} | {r.nats_rss_mb:.1f} | {r.nats_fds} "
            f"| {fmt(r.loop_lag_mean_ms)} / {fmt(r.loop_lag_p99_ms)} / {fmt(r.loop_lag_max_ms)} | {lags} "
            f"| {fmt(r.open_incidents)} | {r.data_mb:.1f} | {r.load1:.1f} |"
        )
    slopes: dict[str, float] = summary["slope_per_hour_last_half"]  # type: ignore[assignment]
    half = [r for r in rows if r.minute > len(rows) / 2]
    lines += ["", "| over the last half | first | last | slope per hour |", "|---|---|---|---|"]
    for name, title in COLUMNS:
        if half:
            lines.append(
                f"| {title} | {fmt(column(half[0], name))} | {fmt(column(half[-1], name))} | {fmt(slopes[name])} |"
            )
    kinds: dict[str, list[int]] = summary.get("error_kinds") or {}  # type: ignore[assignment]
    if kinds:
        lines += ["", "| error (ids taken out) | in minutes |", "|---|---|"]
        lines += [f"| `{kind}` | {', '.join(map(str, minutes))} |" for kind, minutes in kinds.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--rate", type=float, default=5)
    parser.add_argument("--groups", type=int, default=1500)
    parser.add_argument("--unanswered-every", type=int, default=50, help="0: answer every alarm")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace serve's allocations from minute 1 on; print what grew, by traceback, every --snapshot-every",
    )
    parser.add_argument(
        "--census",
        action="store_true",
        help="count serve's live objects by type (and its heap) from minute 1 on, every --snapshot-every; cheap",
    )
    parser.add_argument("--snapshot-every", type=int, default=5, help="minutes between tracemalloc snapshots")
    parser.add_argument("--frames", type=int, default=12, help="frames kept per traced allocation")
    parser.add_argument(
        "--cache-incidents",
        type=int,
        help="shrink the incidents row cache (the read model's) to this many, so that it is full early",
    )
    parser.add_argument(
        "--cached-incidents",
        type=int,
        help="shrink the deciding cache (handlers' IncidentCache) to this many, so that it is full early",
    )
    parser.add_argument(
        "--keys-memo",
        type=int,
        help="shrink the keyring's memos of envelopes (store/keys.py MEMO) to this many, so that they are full early",
    )
    parser.add_argument("--workdir", help="keep the service's data here (default: a temporary directory, removed)")
    parser.add_argument("--markdown", help="also write the table (every 5th minute) and the slopes to this file")
    parser.add_argument("--json", help="also write every row and the slopes to this file")
    args = parser.parse_args()
    if args.groups < args.rate * (UNANSWERED_RESOLVE_S + 30):
        parser.error("--groups too small: a group would call again before its last incident closed")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dispatch-soak-"))
    try:
        summary = asyncio.run(Soak(args, workdir).run())
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    table = markdown(summary, 5)
    print("\n" + table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
