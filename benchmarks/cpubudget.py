"""A CPU budget per call: py-spy samples of `dispatch serve` folded into the stages of an alarm.

The profiler (`py-spy record --format raw --nonblocking`, a sampling profiler outside the process)
runs over the measured load only. Its samples say where the process was busy; the process's CPU
time from /proc over the same window says how much: each stage gets the total CPU per call times
its share of the busy samples. (A sample of a thread that was runnable but waiting for a core
counts as busy to py-spy, so the samples' own count is not used as a time on a loaded machine.)

A sample's stage is decided by its frames from the innermost outwards: the first frame that a rule
names wins, so a log line written by the fan-out is "metrics and logs", a message published by the
event store for the fan-out is "log append" (with the caller that asked for it), and what no rule
names is "event loop and NATS client" (asyncio, selectors, nats-py's reading) or "other".
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PY_SPY = str(Path(sys.executable).parent / "py-spy")
RATE = 250  # samples per second

HTTP_IN = "HTTP in and auth"
ROUTING = "routing"
APPEND = "log append"
LOG_READS = "log reads"
FANOUT = "fan-out"
WEBHOOK = "webhooks"
OUTCOMES = "outcome records"
READ_MODELS = "read models"
SEALING = "sealing (personal data)"
OBSERVE = "metrics and logs"
TIMERS = "timers and escalation"
RESPONSES = "responses"
CLIENT = "NATS client (parse, flush)"
DISPATCH = "message dispatch (FastStream)"
LOOP = "event loop"
OTHER = "other"
IDLE = "idle"  # waiting in epoll or on a lock: py-spy may count it, it is no CPU, and it is left out

STAGES = (
    HTTP_IN,
    ROUTING,
    APPEND,
    LOG_READS,
    FANOUT,
    WEBHOOK,
    OUTCOMES,
    READ_MODELS,
    SEALING,
    TIMERS,
    RESPONSES,
    OBSERVE,
    CLIENT,
    DISPATCH,
    LOOP,
    OTHER,
)

# the event store's functions that append (the rest read: an aggregate's events, the last message)
APPENDING = (
    "EventStore.append",
    "EventStore._append",
    "EventStore._request",
    "EventStore._batch",
    "EventStore._already_stored",
)

# (path fragment, function name or "" for any): first match from the innermost frame outwards.
# Order within the list does not matter for different frames; for one frame the first rule wins.
RULES: tuple[tuple[str, str, str], ...] = (
    # metrics and logs, wherever they are called from
    ("/structlog/", "", OBSERVE),
    ("/prometheus_client/", "", OBSERVE),
    ("dispatch/observe/", "", OBSERVE),
    # sealing and opening personal data in events (whoever asks: an append, a read, a read model)
    ("dispatch/events/sealing.py", "", SEALING),
    ("dispatch/store/keys.py", "", SEALING),
    ("/cryptography/", "", SEALING),
    ("/logging/__init__.py", "", OBSERVE),
    # the log: every append, every read of an aggregate's events, the batch helper
    *(("dispatch/store/eventstore.py", f, APPEND) for f in APPENDING),
    ("dispatch/store/eventstore.py", "", LOG_READS),
    ("dispatch/store/batch.py", "", APPEND),
    ("dispatch/store/timers.py", "", TIMERS),
    ("dispatch/handlers/escalation.py", "", TIMERS),
    # outgoing webhooks: bodies, signatures, the HTTP client
    ("dispatch/channels/webhook.py", "", WEBHOOK),
    ("dispatch/channels/http.py", "", WEBHOOK),
    ("dispatch/channels/robots.py", "", WEBHOOK),
    ("dispatch/domain/signing.py", "", WEBHOOK),
    # delivery outcomes recorded on the log (DeliverySucceeded / DeliveryFailed)
    ("dispatch/handlers/delivery.py", "", OUTCOMES),
    # fan-out: who to notify, the jobs, the notice
    ("dispatch/handlers/fanout.py", "", FANOUT),
    ("dispatch/domain/delivery.py", "", FANOUT),
    ("dispatch/channels/routing.py", "", FANOUT),
    ("dispatch/store/jobs.py", "", FANOUT),
    ("dispatch/handlers/pool.py", "", FANOUT),
    # routing: the call to its group, the directory, the flood limiter, the incident's decision
    ("dispatch/handlers/calls.py", "", ROUTING),
    ("dispatch/handlers/flood.py", "", ROUTING),
    ("dispatch/domain/directory.py", "", ROUTING),
    ("dispatch/domain/dialing.py", "", ROUTING),
    ("dispatch/domain/phone.py", "", ROUTING),
    ("dispatch/domain/ratelimit.py", "", ROUTING),
    ("dispatch/handlers/responses.py", "", RESPONSES),
    # read models and the live hub
    ("dispatch/projections/", "", READ_MODELS),
    ("dispatch/api/live.py", "", READ_MODELS),
    ("/sqlalchemy/", "", READ_MODELS),
    ("/sqlite3/", "", READ_MODELS),
    # HTTP in: the server, the framework, tokens and the API's handlers
    ("dispatch/api/", "", HTTP_IN),
    ("/litestar/", "", HTTP_IN),
    ("/uvicorn/", "", HTTP_IN),
    ("/h11/", "", HTTP_IN),
    ("/httptools/", "", HTTP_IN),
    ("dispatch/domain/access.py", "", HTTP_IN),
    ("/jwt/", "", HTTP_IN),
    # the floor of e2e.py (`benchmarks/e2e_floor.py`): its own few functions, by what they stand for
    ("benchmarks/e2e_floor.py", "Floor.read", LOG_READS),
    ("benchmarks/e2e_floor.py", "Floor.apply", READ_MODELS),
    ("benchmarks/e2e_floor.py", "Floor.on_event", READ_MODELS),
    ("benchmarks/e2e_floor.py", "Floor.fan_out.<locals>.ring", WEBHOOK),
    ("benchmarks/e2e_floor.py", "Floor.app", HTTP_IN),
    ("benchmarks/e2e_floor.py", "Floor.call", ROUTING),
    ("benchmarks/e2e_floor.py", "Floor.fan_out", FANOUT),
    ("benchmarks/e2e_floor.py", "Floor.on_trigger", FANOUT),
)

# Only when no rule above names any frame of the stack (and the loop's own frames last): the NATS
# client's own work (reading, parsing, flushing), the subscribers' dispatch, the loop, that none of
# the stages can be told from.
WEAK_RULES: tuple[tuple[str, str, str], ...] = (
    ("/faststream/", "", DISPATCH),
    ("/fast_depends/", "", DISPATCH),
    ("dispatch/handlers/subscribers.py", "", DISPATCH),
    ("dispatch/handlers/bus.py", "", DISPATCH),
    ("dispatch/handlers/eager.py", "", DISPATCH),
    ("/nats/", "", CLIENT),
    ("dispatch/store/headers.py", "", CLIENT),
)
LOOP_RULES: tuple[tuple[str, str, str], ...] = (
    ("/asyncio/", "", LOOP),
    ("/selectors.py", "", LOOP),
)

# Innermost frames that wait rather than run (file fragment, function).
IDLE_LEAVES: tuple[tuple[str, str], ...] = (
    ("/selectors.py", "EpollSelector.select"),
    ("/selectors.py", "select"),
    ("/threading.py", "Condition.wait"),
    ("/threading.py", "Event.wait"),
    ("/queue.py", "Queue.get"),
    ("/concurrent/futures/thread.py", "_worker"),
    ("/psycopg/", "Connection.wait"),  # waiting for PostgreSQL's answer
    ("/psycopg/", "BaseConnection.wait"),
)

# The frames just outside the event store name which append it was (a caller's file -> a label).
APPEND_CALLERS: tuple[tuple[str, str], ...] = (
    ("dispatch/handlers/calls.py", "the alarm and the call index"),
    ("dispatch/handlers/fanout.py", "the notice"),
    ("dispatch/handlers/delivery.py", "delivery outcomes"),
    ("dispatch/store/timers.py", "timers"),
    ("dispatch/handlers/escalation.py", "timers"),
    ("dispatch/handlers/responses.py", "responses"),
    ("dispatch/handlers/uow.py", ""),  # the unit of work: look further out
    ("dispatch/handlers/aggregates.py", ""),
    ("dispatch/projections/", "read models' reads"),
    ("benchmarks/e2e_floor.py", "the floor's"),
)

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Frame:
    function: str
    file: str


def parse_frame(text: str) -> Frame:
    """One py-spy raw frame, `function (file:line)`."""
    match = FRAME.match(text.strip())
    if match is None:
        return Frame(text.strip(), "")
    return Frame(match["function"], match["file"])


def parse_raw(lines: Iterable[str]) -> Counter[tuple[Frame, ...]]:
    """py-spy's raw (collapsed) output: `root;...;leaf count` per line -> stacks, root first."""
    stacks: Counter[tuple[Frame, ...]] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stacks[tuple(parse_frame(f) for f in stack.split(";"))] += int(count)
    return stacks


def _rule(frame: Frame, rules: tuple[tuple[str, str, str], ...]) -> str | None:
    path = frame.file.replace("\\", "/")
    for fragment, function, stage in rules:
        if fragment in path and (not function or function == frame.function):
            return stage
    return None


def _append_caller(outer: Sequence[Frame]) -> str:
    """Which append: the first caller outside the event store that names one (innermost first)."""
    for frame in outer:
        path = frame.file.replace("\\", "/")
        if "dispatch/store/eventstore.py" in path or "dispatch/store/batch.py" in path:
            continue
        for fragment, label in APPEND_CALLERS:
            if fragment in path:
                if label:
                    return label
                break
    return "other"


def stage_of(stack: Sequence[Frame]) -> str:
    """The stage of one sampled stack (root first): the innermost frame a rule names decides."""
    frames = list(reversed(stack))  # innermost first
    if frames and any(f in frames[0].file and frames[0].function == fn for f, fn in IDLE_LEAVES):
        return IDLE
    for i, frame in enumerate(frames):
        stage = _rule(frame, RULES)
        if stage is None:
            continue
        if stage == APPEND:
            return f"{APPEND}: {_append_caller(frames[i + 1 :])}"
        return stage
    for rules in (WEAK_RULES, LOOP_RULES):
        for frame in frames:
            if (stage := _rule(frame, rules)) is not None:
                return stage
    return OTHER


def fold(stacks: Counter[tuple[Frame, ...]]) -> Counter[str]:
    """Samples per stage."""
    stages: Counter[str] = Counter()
    for stack, count in stacks.items():
        stages[stage_of(stack)] += count
    return stages


def budget(stages: Counter[str], cpu_us_per_call: float) -> dict[str, float]:
    """µs of CPU per call for each stage: the total per call shared out by the stages' busy samples."""
    busy = Counter({stage: count for stage, count in stages.items() if stage != IDLE})
    total = sum(busy.values())
    if not total:
        return {}
    return {stage: cpu_us_per_call * count / total for stage, count in busy.most_common()}


def stage_order(stage: str) -> tuple[int, str]:
    base = stage.split(":", 1)[0]
    return (STAGES.index(base) if base in STAGES else len(STAGES), stage)


def table(columns: dict[str, dict[str, float]], totals: dict[str, float]) -> str:
    """A markdown table: a row per stage, a column per run (µs of CPU per call), then the totals."""
    names = sorted({s for c in columns.values() for s in c}, key=stage_order)
    head = "| stage (µs CPU per call) | " + " | ".join(columns) + " |"
    lines = [head, "|---|" + "---|" * len(columns)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{c.get(name, 0.0):.0f}" for c in columns.values()) + " |")
    for label, value in totals.items():
        lines.append(f"| **{label}** | {value} |" if isinstance(value, str) else f"| **{label}** | {value:.0f} |")
    return "\n".join(lines) + "\n"


class Profiler:
    """`py-spy record` on one process from start() to stop(), raw format, into `path`."""

    def __init__(self, pid: int, path: Path, rate: int = RATE) -> None:
        self.pid, self.path, self.rate = pid, path, rate
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            PY_SPY,
            "record",
            "--pid",
            str(self.pid),
            "--format",
            "raw",
            "--rate",
            str(self.rate),
            "--nonblocking",
            "--full-filenames",
            "--output",
            str(self.path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.5)  # py-spy attaches
        if self.proc.returncode is not None:
            raise RuntimeError("py-spy did not start (is ptrace allowed here?)")

    async def stop(self) -> Counter[tuple[Frame, ...]]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(self.proc.communicate(), 120)
        if not self.path.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        return parse_raw(self.path.read_text().splitlines())


def main() -> int:
    """`python benchmarks/cpubudget.py RAW... [--stage NAME]`: samples per stage, or one stage's top stacks."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("raw", nargs="+", help="py-spy raw files")
    parser.add_argument("--stage", help="print this stage's most sampled innermost frames")
    parser.add_argument("--depth", type=int, default=4, help="innermost frames shown per stack")
    parser.add_argument("--cpu-us", type=float, help="the process's measured CPU per call: print µs per stage")
    args = parser.parse_args()
    stacks: Counter[tuple[Frame, ...]] = Counter()
    for path in args.raw:
        stacks.update(parse_raw(Path(path).read_text().splitlines()))
    total = sum(stacks.values())
    if not args.stage:
        stages = fold(stacks)
        shares = budget(stages, args.cpu_us) if args.cpu_us else {}
        for stage, count in sorted(stages.items(), key=lambda kv: stage_order(kv[0])):
            us = f"{shares[stage]:7.0f} µs" if stage in shares else ""
            print(f"{count / total:7.1%} {count:7d} {us:>10}  {stage}")
        return 0
    tails: Counter[str] = Counter()
    for stack, count in stacks.items():
        if stage_of(stack) == args.stage:
            tail = [f"{f.function} ({Path(f.file).parent.name}/{Path(f.file).name})" for f in stack[-args.depth :]]
            tails[" < ".join(reversed(tail))] += count
    for tail, count in tails.most_common(40):
        print(f"{count / total:7.1%} {tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
