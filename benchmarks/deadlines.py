"""Deadlines on time in a storm: N uncovered alarms whose ack deadlines fall due in the same second.

In one run, on one machine, against `dispatch serve` on its embedded defaults (own nats-server,
fsync always, SQLite read models) with every webhook going to a receiver in a second process
(a bare asyncio HTTP/1.1 server, as in benchmarks/e2e.py):

- N ten-number groups; N alarms raised over HTTP at `--rate` calls/s, nobody answering. Their
  deadlines are aligned by village: alarm i goes to the village of its quarter-second of the raise,
  whose ack deadline (DISPATCH_ACK_DEADLINE overridden per village) ends at the same instant T for
  every quarter, so every ack deadline falls due in [T, T + 0.25 s); the escalate deadlines in
  [T + gap, T + gap + 0.25 s). Due time of an incident = its `raised_at` (in the webhook) + its
  village's deadline;
- lateness = a tier's escalation reaching the receiver (tier 1: its three webhooks, the officer's,
  the assistant's and the duty desk's, arrived; tier 2: the command centre's) minus its due time; p50 / p99 / max
  per tier, with the incidents a tier never reached and those escalated twice (two rounds) counted;
- the alarm path meanwhile: `--probe` new alarms/s on other groups from 2 s before T until the
  escalations are done, POST -> the 9th webhook of each; p99 before T and during the burst;
- with `--kill`: the same, with the service and its embedded nats-server SIGKILLed one second
  after T and restarted at once on the same data: lateness again (it includes the time down), the
  restart time (exec -> /readyz 200, N incidents open), whether the overdue deadlines were
  escalated in due-time order, and the probes from the restart on (the calls answered 503 and
  retried, as a gateway would, are counted);
- where the time goes, read from the log afterwards for tier 1: due -> the server fired the schedule
  (its timestamp in DISPATCH_TIMERS) -> the escalation appended (IncidentEscalated's timestamp)
  -> handed to the channel (`handed_at`) -> the receiver; and for the probes sent during the burst:
  POST -> the alarm appended (its timestamp in the log) -> handed -> the ninth webhook received;
- the raw baseline in the same round: N NATS message schedules due at the same instant, in a stream
  with `allow_msg_schedules` on a server of the same kind, fired into a plain nats-py consumer;
  lateness = receipt - due.
- with `--floor`, also the floor in the same round (`benchmarks/floor.py`): the least a Python
  process on this stack does per tier-1 escalation (the decision appended, three webhooks, the
  outcome appended), N at once from an in-process clock; lateness = the third webhook - due.

`--compare DIR` runs, in every round, the same case against `dispatch serve` from another source
tree (the old commit's worktree) too, alternating which goes first; ratios are against the round's
baseline.

    python benchmarks/deadlines.py [--alarms 100 1000 5000] [--rounds 1] [--kill] [--floor] [--compare DIR]
                                   [--rate 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from common import GROUP_SIZE, Hit, Receiver, caller_of, cpu_seconds, pct, start_serve
from nats.js.api import AckPolicy, ConsumerConfig

from dispatch.channels.http import HttpPoster
from dispatch.store.provision import ensure_stream
from dispatch.store.server import EmbeddedNats, free_port, running_auth, running_url
from dispatch.store.timers import at_header

ROOT = Path(__file__).resolve().parents[1]
BUCKET_S = 0.25
TIER_GAP_S = 2.0
TIER1_TARGETS = 3  # officer, assistant and the duty desk (DISPATCH_DUTY_DESK)
DUTY_DESK = "+8673100000000"
SECRET = "bench-secret"
PROFILE = os.environ.get("BENCH_PROFILE")  # a directory: py-spy samples of `dispatch serve` during the burst
PYSPY = os.environ.get("PYSPY", "py-spy")
CPROFILE = os.environ.get("BENCH_CPROFILE")  # a directory: cProfile of the whole `dispatch serve` (no kill)
UNACKED = ConsumerConfig(ack_policy=AckPolicy.NONE)


class Serve:
    """`dispatch serve` from `source` on `data_dir` (embedded NATS), killable with SIGKILL, restartable."""

    def __init__(self, source: Path, data_dir: Path, env: dict[str, str]) -> None:
        self.source = source
        self.data_dir = data_dir
        self.port = free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.profile: Path | None = None

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds (user + system) used so far by the service and by its embedded nats-server."""
        assert self.proc is not None
        nats_pid = int((self.data_dir / "nats" / "pid").read_text())
        return cpu_seconds([self.proc.pid], this_process=False), cpu_seconds([nats_pid], this_process=False)

    async def stored(self) -> tuple[int, int]:
        """The last sequences of DISPATCH_EVENTS and DISPATCH_TIMERS (every message stored, fsynced)."""
        url = running_url(self.data_dir)
        assert url is not None
        nc = await nats.connect(url, **running_auth(self.data_dir).connect_kwargs())
        try:
            js = nc.jetstream()
            events = await js.stream_info("DISPATCH_EVENTS")
            timers = await js.stream_info("DISPATCH_TIMERS")
            return events.state.last_seq, timers.state.last_seq
        finally:
            await nc.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start and wait until ready; the seconds it took."""
        started = time.monotonic()
        env = {"PYTHONPATH": str(self.source), **self.env}
        command = None
        if self.profile is not None:
            command = [sys.executable, "-m", "cProfile", "-o", str(self.profile), "-m", "dispatch", "serve"]
        self.proc = start_serve(
            self.data_dir, self.port, env, command=command, cwd=self.source, timeout=120, interval=0.05
        )
        return time.monotonic() - started

    def kill9(self) -> None:
        """SIGKILL the service and its embedded nats-server at once."""
        assert self.proc is not None
        nats_pid = int((self.data_dir / "nats" / "pid").read_text())
        os.kill(self.proc.pid, signal.SIGKILL)
        os.kill(nats_pid, signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{nats_pid}").exists() and time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{nats_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state == "Z":
                break
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def burst_roster(alarms: int, probes: int, rate: float) -> tuple[str, int]:
    """Groups 0..alarms-1 in villages b<quarter of their raise>, then the probe groups; the number of
    burst villages."""
    lines = ["village,group,phone,role,name"]
    per_bucket = max(1, round(rate * BUCKET_S))
    for g in range(alarms + probes):
        village = f"b{g // per_bucket}" if g < alarms else "probe"
        base = 13000000000 + g * 100
        roles = ["leader", "officer", "assistant"] + ["household"] * (GROUP_SIZE - 3)
        for k, role in enumerate(roles):
            lines.append(f"{village},{g},{base + k},{role},m{k}")
    return "\n".join(lines) + "\n", (alarms + per_bucket - 1) // per_bucket


@dataclass
class Tiers:
    p50: float = float("nan")
    p99: float = float("nan")
    max: float = float("nan")
    missing: int = 0
    twice: int = 0


@dataclass
class Case:
    source: str
    alarms: int
    kill: bool
    tier1: Tiers = field(default_factory=Tiers)
    tier2: Tiers = field(default_factory=Tiers)
    duplicate_webhooks: int = 0
    restart_s: float | None = None
    order_inversion_s: float | None = None
    probe_before_p99_ms: float | None = None
    probe_during_p99_ms: float | None = None
    probe_during_max_ms: float | None = None
    probe_503: int = 0
    """Answers 503 the probes met (each retried, as a gateway would): "during" is after the restart
    with `--kill`."""
    stages_ms: dict[str, float] = field(default_factory=dict)
    cpu_service_s: float | None = None
    cpu_nats_s: float | None = None
    stored_events: int | None = None
    stored_timers: int | None = None


def lateness(
    hits: list[Hit], tier: int, deadline_of: dict[str, float], incidents: set[str]
) -> tuple[Tiers, dict[str, float]]:
    """Per incident: when its tier had reached every target (first arrival per key), minus due."""
    first: dict[str, dict[str, float]] = {}
    rounds: dict[str, set[int]] = {}
    for h in hits:
        if h.tier != tier or h.incident not in incidents:
            continue
        keys = first.setdefault(h.incident, {})
        keys[h.key] = min(keys.get(h.key, h.at), h.at)
        rounds.setdefault(h.incident, set()).add(h.round)
    need = TIER1_TARGETS if tier == 1 else 1
    late: dict[str, float] = {}
    for incident, keys in first.items():
        if len(keys) < need:
            continue
        hit = next(h for h in hits if h.incident == incident and h.tier == tier)
        due = hit.raised_at + deadline_of[hit.village] + (TIER_GAP_S if tier == 2 else 0.0)
        late[incident] = max(keys.values()) - due
    values = list(late.values())
    result = Tiers(missing=len(incidents) - len(late), twice=sum(1 for r in rounds.values() if len(r) > 1))
    if values:
        result.p50, result.p99, result.max = pct(values, 0.5), pct(values, 0.99), max(values)
    return result, late


async def stages(
    serve: Serve, late1: dict[str, float], probe_sent: dict[str, float], probe_rung: dict[str, float]
) -> dict[str, float]:
    """Tier 1 from the log, medians and p99s in ms over the incidents: the server firing the schedule
    (its fired message's timestamp - due), the escalation appended (IncidentEscalated's timestamp -
    due), its targets handed to the channel (`handed_at` - appended), received (- handed)."""
    from dispatch.events.codec import decode_headers
    from dispatch.events.model import DeliverySucceeded, IncidentEscalated, IncidentOpened

    url = running_url(serve.data_dir)
    if url is None:
        return {}
    nc = await nats.connect(url, **running_auth(serve.data_dir).connect_kwargs())
    js = nc.jetstream()
    fired: dict[str, tuple[float, float]] = {}
    escalated: dict[str, tuple[float, int]] = {}
    handed: dict[tuple[str, int], float] = {}
    opened: dict[str, tuple[float, int]] = {}
    try:
        sub = await js.pull_subscribe("dispatch.timer.>", stream="DISPATCH_TIMERS", config=UNACKED)
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for m in msgs:
                body = json.loads(m.data)
                if body["timer"] == "ack" and body["incident_id"] not in fired:
                    due = datetime.fromisoformat(body["due_at"].replace("Z", "+00:00")).timestamp()
                    fired[body["incident_id"]] = (due, m.metadata.timestamp.timestamp())
        await sub.unsubscribe()
        sub = await js.pull_subscribe("dispatch.evt.>", stream="DISPATCH_EVENTS", config=UNACKED)
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for m in msgs:
                try:
                    event = decode_headers(m.headers or {}, m.data)
                except Exception:
                    continue
                if isinstance(event, IncidentOpened) and event.incident_id in probe_sent:
                    opened[event.incident_id] = (m.metadata.timestamp.timestamp(), m.metadata.sequence.stream)
                elif isinstance(event, IncidentEscalated) and event.tier == 1:
                    escalated[event.incident_id] = (m.metadata.timestamp.timestamp(), m.metadata.sequence.stream)
                elif isinstance(event, DeliverySucceeded) and event.handed_at is not None:
                    handed[(event.incident_id, event.round)] = event.handed_at.timestamp()
        await sub.unsubscribe()
    finally:
        await nc.close()
    rows: dict[str, list[float]] = {"server_fired": [], "appended": [], "handed": [], "received": []}
    for incident, total in late1.items():
        if incident not in fired or incident not in escalated:
            continue
        due, fired_at = fired[incident]
        appended_at, seq = escalated[incident]
        handed_at = handed.get((incident, seq))
        if handed_at is None:
            continue
        rows["server_fired"].append(fired_at - due)
        rows["appended"].append(appended_at - due)
        rows["handed"].append(handed_at - appended_at)
        rows["received"].append(due + total - handed_at)
    for name in ("probe_appended", "probe_handed", "probe_received"):
        rows[name] = []
    for incident, (appended_at, seq) in opened.items():
        handed_at = handed.get((incident, seq))
        if handed_at is None:
            continue
        rows["probe_appended"].append(appended_at - probe_sent[incident])
        rows["probe_handed"].append(handed_at - appended_at)
        rows["probe_received"].append(probe_rung[incident] - handed_at)
    out: dict[str, float] = {}
    for name, values in rows.items():
        if values:
            out[f"{name}_p50"] = pct(values, 0.5) * 1000
            out[f"{name}_p99"] = pct(values, 0.99) * 1000
    return out


async def run_case(source: Path, workdir: Path, alarms: int, kill: bool, rate: float, probe_rate: float) -> Case:
    case = Case(source=str(source), alarms=alarms, kill=kill)
    receiver = Receiver()
    await receiver.start()
    probes = int(probe_rate * 12) + 10
    csv, villages = burst_roster(alarms, probes, rate)
    raise_s = alarms / rate
    ack_end = raise_s + 4.0  # seconds after the first call: T
    deadline_of = {f"b{b}": ack_end - b * BUCKET_S for b in range(villages)}
    serve = Serve(
        source,
        workdir / "svc",
        {
            "DISPATCH_WEBHOOK_URLS": receiver.hook,
            "DISPATCH_WEBHOOK_SECRET": SECRET,
            "DISPATCH_COMMAND_CENTRE": receiver.hook.replace("/hook", "/centre"),
            "DISPATCH_DUTY_DESK": DUTY_DESK,
            "DISPATCH_ACK_DEADLINE": "3600",
            "DISPATCH_ESCALATE_AFTER": "7200",
            "DISPATCH_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        },
    )
    if CPROFILE and not kill:
        serve.profile = Path(CPROFILE) / f"{Path(source).name}-{alarms}-{time.time():.0f}.prof"
    http = HttpPoster(timeout=120, max_connections=256)
    try:
        await asyncio.to_thread(serve.start)
        token = (serve.data_dir / "admin.token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        imported = await asyncio.to_thread(  # 5,000 groups under load: minutes, past the poster's timeout
            httpx.post,
            f"{serve.base}/v1/groups/import",
            content=csv.encode(),
            headers={**headers, "Content-Type": "text/csv"},
            timeout=900,
        )
        if imported.status_code != 200:
            raise RuntimeError(f"import: {imported.status_code} {imported.text[:300]}")
        json_headers = {**headers, "Content-Type": "application/json"}
        for village, ack in deadline_of.items():
            body = json.dumps({"ack_deadline_s": ack, "escalate_after_s": ack + TIER_GAP_S}).encode()
            r = await asyncio.to_thread(
                httpx.put, f"{serve.base}/v1/villages/{village}/settings", content=body, headers=json_headers
            )
            if r.status_code != 200:
                raise RuntimeError(f"settings: {r.status_code} {r.text[:300]}")

        incidents: dict[int, str] = {}

        async def call(i: int, prefix: str) -> str:
            body = json.dumps({"call_id": f"{prefix}-{i}", "caller": caller_of(i)}).encode()
            answer = await http.post(f"{serve.base}/v1/calls", body, json_headers)
            for _ in range(10):  # 503: the log did not answer in time; a gateway retries the call
                if answer.status != 503:
                    break
                if prefix == "probe":
                    case.probe_503 += 1
                await asyncio.sleep(0.5)
                answer = await http.post(f"{serve.base}/v1/calls", body, json_headers)
            if answer.status != 202:
                raise RuntimeError(f"call {i}: {answer.status} {answer.body[:300]!r}")
            incident: str = answer.json()["incident_id"]
            return incident

        start = time.time()

        async def raise_one(i: int) -> None:
            delay = start + i / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            incidents[i] = await call(i, "burst")

        await asyncio.gather(*(raise_one(i) for i in range(alarms)))
        due_t = start + ack_end
        wanted = set(incidents.values())

        probe_results: list[tuple[float, float]] = []
        probe_sent: dict[str, float] = {}  # a probe during the burst -> its POST, for the split in `stages`
        probe_rung: dict[str, float] = {}  # -> its ninth webhook at the receiver

        async def probe(n: int, sent_at: float) -> None:
            delay = sent_at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.time()
            incident = await call(alarms + n, "probe")
            rung = await receiver.alarm_rung(incident)
            probe_results.append((sent, rung - sent))
            if sent >= due_t:
                probe_sent[incident] = sent
                probe_rung[incident] = rung

        probing = (  # with --kill, from the restart on (below)
            asyncio.gather(*(probe(n, due_t - 2 + n / probe_rate) for n in range(min(probes, int(probe_rate * 10)))))
            if probes and not kill
            else None
        )

        def reached(tier: int) -> int:
            per: dict[str, set[str]] = {}
            for h in receiver.hits:
                if h.tier == tier:
                    per.setdefault(h.incident, set()).add(h.key)
            need = TIER1_TARGETS if tier == 1 else 1
            return sum(1 for i in wanted if len(per.get(i, ())) >= need)

        profiler = None
        if PROFILE and not kill:
            await asyncio.sleep(max(0.0, due_t - 0.2 - time.time()))
            assert serve.proc is not None
            out = Path(PROFILE) / f"{Path(source).name}-{alarms}-{time.time():.0f}.txt"
            profiler = await asyncio.create_subprocess_exec(
                PYSPY,
                "record",
                "-p",
                str(serve.proc.pid),
                "-d",
                str(int(TIER_GAP_S + 4)),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(out),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        await asyncio.sleep(max(0.0, due_t - 0.3 - time.time()))
        cpu_before = serve.cpu_s()
        stored_before = await serve.stored()
        if kill:
            await asyncio.sleep(max(0.0, due_t + 1 - time.time()))
            await asyncio.to_thread(serve.kill9)
            case.restart_s = await asyncio.to_thread(serve.start)
            back = time.time()
            probing = asyncio.gather(*(probe(n, back + n / probe_rate) for n in range(int(probe_rate * 10))))
        await receiver.until(lambda: reached(1) == len(wanted) and reached(2) == len(wanted), due_t + TIER_GAP_S + 120)
        if probing is not None:
            await probing
        if not kill:  # what the escalations cost, from just before T and the probes (the same in every tree)
            cpu_after = serve.cpu_s()
            stored_after = await serve.stored()
            case.cpu_service_s = round(cpu_after[0] - cpu_before[0], 2)
            case.cpu_nats_s = round(cpu_after[1] - cpu_before[1], 2)
            case.stored_events = stored_after[0] - stored_before[0]
            case.stored_timers = stored_after[1] - stored_before[1]
        if profiler is not None:
            await profiler.wait()
        await asyncio.sleep(1.0)  # late duplicates, if any
        hits = list(receiver.hits)
        case.tier1, late1 = lateness(hits, 1, deadline_of, wanted)
        case.tier2, _ = lateness(hits, 2, deadline_of, wanted)
        case.duplicate_webhooks = len(hits) - len({h.key for h in hits})
        if probe_results:
            before = [lat * 1000 for sent, lat in probe_results if sent < due_t]
            during = [lat * 1000 for sent, lat in probe_results if sent >= due_t]
            case.probe_before_p99_ms = pct(before, 0.99) if before else None
            case.probe_during_p99_ms = pct(during, 0.99) if during else None
            case.probe_during_max_ms = max(during) if during else None
        if kill:
            case.order_inversion_s = await due_order(serve)
        case.stages_ms = await stages(serve, late1, probe_sent, probe_rung)
        return case
    finally:
        await http.close()
        await asyncio.to_thread(serve.stop)
        await receiver.stop()


async def due_order(serve: Serve) -> float:
    """How far the escalations appended after the restart stray from the order of their due times:
    the most any of them was due before one appended ahead of it (0: in due-time order), seconds."""
    from dispatch.events.codec import decode_headers
    from dispatch.events.model import IncidentEscalated, IncidentOpened

    url = running_url(serve.data_dir)
    assert url is not None
    nc = await nats.connect(url, **running_auth(serve.data_dir).connect_kwargs())
    js = nc.jetstream()
    opened: dict[str, IncidentOpened] = {}
    dues: list[float] = []
    try:
        sub = await js.pull_subscribe("dispatch.evt.incident.>", stream="DISPATCH_EVENTS", config=UNACKED)
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for m in msgs:
                event = decode_headers(m.headers or {}, m.data)
                if isinstance(event, IncidentOpened):
                    opened[event.incident_id] = event
                elif isinstance(event, IncidentEscalated) and m.metadata.timestamp.timestamp() > serve_started(serve):
                    o = opened[event.incident_id]
                    after = o.ack_deadline_s if event.reason == "ack_deadline" else o.escalate_after_s
                    dues.append(o.at.timestamp() + after)
    finally:
        await nc.close()
    worst, latest = 0.0, float("-inf")
    for due in dues:
        worst, latest = max(worst, latest - due), max(latest, due)
    return worst


def serve_started(serve: Serve) -> float:
    return (serve.data_dir / "nats" / "url").stat().st_mtime


async def run_baseline(workdir: Path, count: int) -> Tiers:
    """`count` message schedules due at one instant, fired into a plain nats-py push consumer."""
    server = EmbeddedNats(workdir / "raw")
    await server.start()
    nc = await nats.connect(server.url, **server.auth.connect_kwargs())
    js = nc.jetstream()
    try:
        await ensure_stream(
            nc,
            {
                "name": "BENCH_TIMERS",
                "subjects": ["bench.sched.>", "bench.timer.>"],
                "storage": "file",
                "retention": "limits",
                "allow_msg_schedules": True,
            },
        )
        received: list[float] = []
        done = asyncio.get_running_loop().create_future()

        async def on_timer(msg: nats.aio.msg.Msg) -> None:
            received.append(time.time())
            await msg.ack()
            if len(received) == count and not done.done():
                done.set_result(None)

        await js.subscribe("bench.timer.>", cb=on_timer, manual_ack=True, stream="BENCH_TIMERS")
        due = time.time() + 3.0 + count / 500
        at = at_header(datetime.fromtimestamp(due, UTC))

        async def schedule(i: int) -> None:
            headers = {"Nats-Schedule": at, "Nats-Schedule-Target": f"bench.timer.{i}"}
            await js.publish(f"bench.sched.{i}", b"x", headers=headers, timeout=30)

        for chunk in range(0, count, 256):
            await asyncio.gather(*(schedule(i) for i in range(chunk, min(count, chunk + 256))))
        if time.time() > due:
            raise RuntimeError("baseline: scheduling took longer than the lead time")
        await asyncio.wait_for(done, due - time.time() + 60)
        late = [r - due for r in received]
        return Tiers(pct(late, 0.5), pct(late, 0.99), max(late))
    finally:
        await nc.close()
        await server.stop()


@dataclass
class Floor:
    """The floor's lateness (the third webhook of each incident at the receiver, minus due) and CPU."""

    late: Tiers
    cpu_s: float
    nats_cpu_s: float
    webhooks: int
    keys: int


async def run_floor(workdir: Path, count: int) -> Floor:
    """`benchmarks/floor.py` for `count` escalations due at one instant, into a receiver of its own."""
    receiver = Receiver()
    await receiver.start()
    due = time.time() + 5.0 + count / 250
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "benchmarks" / "floor.py"),
        receiver.hook,
        str(count),
        str(due),
        str(workdir),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        stdout = proc.stdout

        async def line(starting: bytes) -> bytes:
            """The next line of the floor's that starts so (its nats-server's log lines come between)."""
            while not (got := await stdout.readline()).startswith(starting):
                if not got:
                    raise RuntimeError("floor: ended early")
            return got

        await line(b"ready")
        if time.time() > due:
            raise RuntimeError("floor: not set up before the due time")
        figures = json.loads(await asyncio.wait_for(line(b"{"), due - time.time() + 120))
        await receiver.until(lambda: len(receiver.hits) >= count * TIER1_TARGETS, time.time() + 10)
        last: dict[str, float] = {}
        for hit in receiver.hits:
            last[hit.incident] = max(last.get(hit.incident, hit.at), hit.at)
        late = [at - due for at in last.values()]
        tiers = Tiers(pct(late, 0.5), pct(late, 0.99), max(late), missing=count - len(late))
        keys = len({hit.key for hit in receiver.hits})
        return Floor(tiers, round(figures["cpu_s"], 2), round(figures["nats_cpu_s"], 2), len(receiver.hits), keys)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await receiver.stop()


def fmt(t: Tiers) -> str:
    return f"{t.p50:+.2f} / {t.p99:+.2f} / {t.max:+.2f}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alarms", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rate", type=float, default=200, help="alarms raised per second")
    parser.add_argument("--probe", type=float, default=20, help="new alarms per second around the burst")
    parser.add_argument("--kill", action="store_true", help="also the kill -9 case")
    parser.add_argument("--only-kill", action="store_true", help="only the kill -9 case")
    parser.add_argument("--compare", help="another source tree (the old commit) run alternately")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--floor", action="store_true", help="also the floor (benchmarks/floor.py) in every round")
    args = parser.parse_args()
    sources = [("new", ROOT)] + ([("old", Path.cwd() / args.compare)] if args.compare else [])
    kills = [True] if args.only_kill else ([False, True] if args.kill else [False])
    results: list[dict[str, Any]] = []
    for round_ in range(1, args.rounds + 1):
        order = sources if round_ % 2 else list(reversed(sources))
        for alarms in args.alarms:
            workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-deadlines-"))
            try:
                base = await run_baseline(workdir, alarms)
                print(f"round {round_} n={alarms} baseline {fmt(base)} s", file=sys.stderr)
                floor = await run_floor(workdir, alarms) if args.floor else None
                if floor is not None:
                    print(
                        f"round {round_} n={alarms} floor {fmt(floor.late)} s (missing {floor.late.missing}) "
                        f"cpu process/nats {floor.cpu_s}/{floor.nats_cpu_s} s",
                        file=sys.stderr,
                    )
                for kill in kills:
                    for name, source in order:
                        case = await run_case(source, workdir, alarms, kill, args.rate, args.probe)
                        if (workdir / "svc").exists():  # kept under its own name (BENCH_KEEP: its serve.log)
                            (workdir / "svc").rename(workdir / f"svc-{name}-{int(kill)}-{time.time():.0f}")
                        row = {"round": round_, "name": name, "baseline": asdict(base), **asdict(case)}
                        if floor is not None:
                            row["floor"] = asdict(floor)
                        results.append(row)
                        print(
                            f"round {round_} n={alarms} {name}{' kill -9' if kill else ''}: "
                            f"tier 1 {fmt(case.tier1)} tier 2 {fmt(case.tier2)} s "
                            f"(missing {case.tier1.missing}/{case.tier2.missing}, twice {case.tier1.twice}/"
                            f"{case.tier2.twice}, duplicate webhooks {case.duplicate_webhooks}) "
                            f"restart {case.restart_s} order inversion {case.order_inversion_s} "
                            f"probe p99 before {case.probe_before_p99_ms} during {case.probe_during_p99_ms} "
                            f"max {case.probe_during_max_ms} ms (503 {case.probe_503}) "
                            f"stages {json.dumps(case.stages_ms)} "
                            f"cpu service/nats {case.cpu_service_s}/{case.cpu_nats_s} s "
                            f"stored events/timers {case.stored_events}/{case.stored_timers}",
                            file=sys.stderr,
                        )
            finally:
                if not os.environ.get("BENCH_KEEP"):
                    shutil.rmtree(workdir, ignore_errors=True)
    print_table(results)
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps({"cases": results}, indent=2))
    return 0


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        "\n| code | alarms | kill -9 | raw p50 / p99 / max s | tier 1 p50 / p99 / max s | tier 2 p50 / p99 / max s "
        "| tier 1 p99 / raw p99 | floor tier 1 p50 / p99 / max s (CPU process / nats s) | restart s "
        "| alarm p99 before / during ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    keys = sorted({(r["name"], r["alarms"], r["kill"]) for r in results}, key=lambda k: (k[1], k[2], k[0]))
    for name, alarms, kill in keys:
        rows = [r for r in results if (r["name"], r["alarms"], r["kill"]) == (name, alarms, kill)]

        def med(path: str, rows: list[dict[str, Any]] = rows) -> float:
            values = []
            for r in rows:
                value: Any = r
                for part in path.split("."):
                    value = value[part]
                if value is not None:
                    values.append(value)
            return statistics.median(values) if values else float("nan")

        raw = f"{med('baseline.p50'):.3f} / {med('baseline.p99'):.3f} / {med('baseline.max'):.3f}"
        t1 = f"{med('tier1.p50'):+.2f} / {med('tier1.p99'):+.2f} / {med('tier1.max'):+.2f}"
        t2 = f"{med('tier2.p50'):+.2f} / {med('tier2.p99'):+.2f} / {med('tier2.max'):+.2f}"
        ratio = statistics.median(r["tier1"]["p99"] / r["baseline"]["p99"] for r in rows)
        restart = f"{med('restart_s'):.1f}" if kill else "-"
        probe = (
            f"after the restart: {med('probe_during_p99_ms'):.0f} ({med('probe_503'):.0f} answered 503)"
            if kill
            else f"{med('probe_before_p99_ms'):.0f} / {med('probe_during_p99_ms'):.0f}"
        )
        killed = "yes" if kill else "no"
        floor = "-"
        if all("floor" in r for r in rows):
            floor = (
                f"{med('floor.late.p50'):+.2f} / {med('floor.late.p99'):+.2f} / {med('floor.late.max'):+.2f} "
                f"({med('floor.cpu_s'):.2f} / {med('floor.nats_cpu_s'):.2f})"
            )
        print(f"| {name} | {alarms} | {killed} | {raw} | {t1} | {t2} | {ratio:.0f}x | {floor} | {restart} | {probe} |")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
