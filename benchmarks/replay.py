"""Replay benchmark: rebuild every read model from a 200k-event log, against a raw read of that log.

One process, one embedded nats-server, in the same run:

- the log: `dispatch.sim.synthetic` makes a realistic county history (rosters, then alarms with their
  delivery notices, answers, escalations, resolutions; about 20 events an incident), published in
  order (the log is written without fsync: writing it is not what is measured);
- raw: an ordered consumer reads the whole stream and only counts messages (nats-py, the way the
  projection runner reads it);
- rebuild: what `dispatch replay` does (drop, rebuild `incidents_v2` and `roster_v1`, take over)
  into a fresh SQLite file, then into a fresh PostgreSQL schema.

Rates are stream messages per second (both sides read the same messages); the ratio is
raw time / rebuild time, median of `--rounds`. Target (issue 9): at least 0.4.

    python benchmarks/replay.py [--events 200000] [--rounds 3] [--postgres postgresql://...]
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
import uuid
from pathlib import Path

import nats
from common import DEFAULT_POSTGRES, drop_schema
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

from dispatch.events import codec
from dispatch.events.subjects import EVENTS_ALL, EVENTS_STREAM, stream_of
from dispatch.projections.rebuild import rebuild_all
from dispatch.projections.registry import all_projections
from dispatch.projections.sql import Database
from dispatch.sim.synthetic import synthetic_history
from dispatch.store.eventstore import H_MSG_ID, EventStore
from dispatch.store.headers import install_header_parser
from dispatch.store.provision import provision
from dispatch.store.server import EmbeddedNats

TARGET = 0.4  # issue 9: rebuild at least 0.4x the raw ordered read


async def publish(nc: NATS, events: int) -> tuple[int, int, float]:
    """Make and store the history; return (messages, incident-side events, seconds to make it)."""
    started = time.perf_counter()
    history = synthetic_history(events=events)
    stored = [s for s in [*history.roster, *history.incidents] if stream_of(s.subject) == EVENTS_STREAM]
    made = time.perf_counter() - started
    for i, item in enumerate(stored, start=1):
        headers = codec.event_headers(item.event)
        headers[H_MSG_ID] = item.msg_id
        await nc.publish(item.subject, codec.encode(item.event), headers=headers)
        if i % 2000 == 0:
            await nc.flush()
    await nc.flush()
    store = EventStore(nc)
    for _ in range(1200):
        if await store.stream_last_seq() >= len(stored):
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("the log did not take the whole history")
    incident_side = sum(s.subject.startswith(("dispatch.evt.incident.", "dispatch.evt.notice.")) for s in stored)
    return len(stored), incident_side, made


async def raw_read(nc: NATS, messages: int) -> float:
    count = 0
    done = asyncio.Event()

    async def counted(_: object) -> None:
        nonlocal count
        count += 1
        if count >= messages:
            done.set()

    started = time.perf_counter()
    sub = await nc.jetstream().subscribe(
        EVENTS_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=counted, idle_heartbeat=2.0
    )
    await done.wait()
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return elapsed


async def rebuild(nc: NATS, url: str) -> tuple[float, int]:
    db = Database(url)
    started = time.perf_counter()
    applied = await rebuild_all(nc, db, all_projections(), progress=False)
    return time.perf_counter() - started, sum(applied.values())


def postgres_reachable(url: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


async def run(args: argparse.Namespace) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="dispatch-replay-bench-"))
    server = EmbeddedNats(root / "data", sync_always=False)
    await server.start()
    schema = f"bench_replay_{uuid.uuid4().hex[:8]}"
    with_pg = postgres_reachable(args.postgres)
    try:
        nc = await nats.connect(server.url, **server.auth.connect_kwargs())
        await provision(nc)
        messages, incident_side, made = await publish(nc, args.events)
        print(f"log: {messages} messages ({incident_side} incident-side events), made in {made:.1f} s", flush=True)
        targets = {"sqlite": ""}
        if with_pg:
            targets["postgresql"] = f"{args.postgres}{'&' if '?' in args.postgres else '?'}schema={schema}"
        else:
            print(f"PostgreSQL not reachable at {args.postgres}: SQLite only", file=sys.stderr)
        times: dict[str, list[float]] = {"raw": [], **{name: [] for name in targets}}
        applied: dict[str, int] = {}
        for round_no in range(1, args.rounds + 1):
            times["raw"].append(await raw_read(nc, messages))
            for name, url in targets.items():
                target = url or f"sqlite:///{root / f'round{round_no}.db'}"
                elapsed, applied[name] = await rebuild(nc, target)
                times[name].append(elapsed)
            line = "  ".join(f"{name} {times[name][-1]:.2f} s" for name in times)
            print(f"round {round_no}: {line}", flush=True)
        await nc.close()
    finally:
        await server.stop()
        if with_pg:
            drop_schema(args.postgres, schema)
        shutil.rmtree(root, ignore_errors=True)

    raw = statistics.median(times["raw"])
    figures: dict[str, object] = {
        "messages": messages,
        "incident_side_events": incident_side,
        "rounds": args.rounds,
        "raw_seconds": round(raw, 3),
        "raw_messages_per_s": round(messages / raw),
    }
    print(f"\n{'':<18}{'median s':>10}{'messages/s':>12}{'events applied':>16}{'ratio to raw':>14}")
    print(f"{'raw read':<18}{raw:>10.2f}{messages / raw:>12,.0f}{'-':>16}{1.0:>14.2f}")
    for name in targets:
        median = statistics.median(times[name])
        ratio = raw / median
        figures[name] = {
            "seconds": round(median, 3),
            "messages_per_s": round(messages / median),
            "applied": applied[name],
            "ratio": round(ratio, 3),
        }
        figures[f"{name}_ratio"] = round(ratio, 3)
        figures[f"{name}_events_per_s"] = round(messages / median)
        print(f"{'rebuild ' + name:<18}{median:>10.2f}{messages / median:>12,.0f}{applied[name]:>16}{ratio:>14.2f}")
    worst = min(raw / statistics.median(times[name]) for name in targets)
    print(
        f"\ntarget: rebuild >= {TARGET}x the raw read -> {'met' if worst >= TARGET else 'NOT met'} (worst {worst:.2f}x)"
    )
    return figures


def main() -> int:
    install_header_parser()  # as the service does (dispatch.store.headers)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server for the PostgreSQL rebuild")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
