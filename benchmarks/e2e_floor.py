"""The floor of the end-to-end benchmark: the least any Python process on this stack does per call.

`benchmarks/e2e.py --floor` runs this in place of `dispatch serve` in every round, with the same
load generator, receiver, roster size and rate, so the service's CPU per call can be read against
what the stack itself costs. It does per call the I/O the architecture requires (docs/architecture.md),
through the service's own parts where it has them, and nothing else: no domain (no folding, no
deciding, no sealing, no metrics, no logs, no console, no duty desk, no gauges), no Litestar (a bare
ASGI app on uvicorn with httptools, as serve's server), JSON by msgspec.

Per call:
- HTTP in: POST /v1/calls with a bearer token (compared in constant time), the body decoded;
- one read round trip: the call's index entries and the line's last message, a batched direct get
  on each of the two streams, sent together (as `EventStore.last_of`, through its `DirectGets`);
- the alarm appended on the incident's subject with expected subject sequence 0 and a message id,
  the call's index entry appended on DISPATCH_INDEX (both through the service's group commit, as
  serve's appends are); then 202;
- the fan-out: the alarm reaches the service's own fan-out consumer (`FANOUT`: durable push
  consumer, deliver group, explicit ack, bound by nats-py as serve binds it); the ack deadline set
  as a message schedule on DISPATCH_TIMERS; nine signed webhooks through the service's HTTP client;
  the outcome appended; the trigger acknowledged;
- the read model: an ordered consumer over the log, each alarm one incident row and nine people's
  rows, each outcome an update, in SQLite (WAL, `synchronous=NORMAL` as the service's), one
  transaction per delivered batch of up to 500 messages or 20 ms, applied inline (no thread).

Prints "ready" once it answers; runs until SIGTERM, then prints "counts" and a JSON object: how many
calls it answered, schedules, webhooks answered 2xx, outcomes and acknowledgements it made, and the incident
and people rows its read model holds (so a test can hold it to doing all of it).

    python benchmarks/e2e_floor.py HOOK_URL HTTP_PORT WORKDIR TOKEN
"""

from __future__ import annotations

import asyncio
import hmac
import json
import signal
import sqlite3
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats
import uvicorn
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from dispatch.channels.http import HttpPoster, sign
from dispatch.cli import event_loop_factory
from dispatch.events.subjects import (
    EVENTS_ALL,
    EVENTS_STREAM,
    FANOUT_PUSH,
    INDEX_STREAM,
    call_index_subjects,
    call_subject,
    incident_subject,
    line_subject,
    notice_subject,
    schedule_subject,
    timer_fired_subject,
)
from dispatch.store.direct import DirectGets
from dispatch.store.groupcommit import GroupCommit
from dispatch.store.provision import FANOUT, ensure_consumer, ensure_stream, events_stream, index_stream, timers_stream
from dispatch.store.server import EmbeddedNats
from dispatch.store.timers import at_header

SECRET = "bench-secret"
RECIPIENTS = 9
encode = msgspec.json.Encoder().encode


class Call(msgspec.Struct):
    call_id: str
    caller: str


class Alarm(msgspec.Struct):
    type: str
    incident_id: str
    caller: str
    at: str
    recipients: list[str]


decode_call = msgspec.json.Decoder(Call).decode
decode_alarm = msgspec.json.Decoder(Alarm).decode
decode_any = msgspec.json.Decoder().decode


class Floor:
    def __init__(self, nc: Any, hook: str, token: str, db: sqlite3.Connection) -> None:
        self.nc = nc
        self.hook = hook
        self.auth = f"Bearer {token}".encode()
        self.log = GroupCommit(nc, timeout=10.0)
        self.index = GroupCommit(nc, timeout=10.0)
        self.timers = GroupCommit(nc, timeout=10.0)
        self.poster = HttpPoster(timeout=10.0)
        self.reads = DirectGets(nc)
        self.db = db
        self.pending: list[Msg] = []
        self.counts: Counter[str] = Counter()
        self.flushing: asyncio.TimerHandle | None = None

    async def read(self, subjects: list[str], stream: str) -> None:
        await self.reads.batch(stream, {"multi_last": subjects, "batch": len(subjects)}, timeout=10.0)

    async def call(self, body: bytes) -> bytes:
        call = decode_call(body)
        group = call.caller[:-1]  # common.roster: a group's ten numbers share all but the last digit
        incident = f"inc-{group.lstrip('+')}"
        await asyncio.gather(
            self.read(list(call_index_subjects(call.call_id)), INDEX_STREAM),
            self.read([line_subject(group), incident_subject(incident)], EVENTS_STREAM),
        )
        now = datetime.now(UTC).isoformat()
        recipients = [f"{group}{d}" for d in range(10) if f"{group}{d}" != call.caller][:RECIPIENTS]
        alarm = encode(
            Alarm(type="IncidentOpened", incident_id=incident, caller=call.caller, at=now, recipients=recipients)
        )
        await self.log.publish(
            [
                (
                    incident_subject(incident),
                    alarm,
                    {"Nats-Msg-Id": f"call-{call.call_id}", "Nats-Expected-Last-Subject-Sequence": "0"},
                )
            ]
        )
        routed = encode({"type": "CallRouted", "incident_id": incident, "call_id": call.call_id})
        await self.index.publish([(call_subject(call.call_id), routed, {"Nats-Msg-Id": f"idx-{call.call_id}"})])
        self.counts["calls"] += 1
        return encode({"incident_id": incident, "status": "raised", "duplicate": False})

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/readyz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if scope["path"] != "/v1/calls" or not hmac.compare_digest(given, self.auth):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            part = await receive()
            body += part.get("body", b"")
            if not part.get("more_body"):
                break
        answer = await self.call(body)
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})

    async def fan_out(self, msg: Msg) -> None:
        alarm = decode_alarm(msg.data)
        seq = msg.metadata.sequence.stream
        due = datetime.fromisoformat(alarm.at) + timedelta(seconds=180)
        target = timer_fired_subject(alarm.incident_id, "ack")
        deadline = self.timers.publish(
            [
                (
                    schedule_subject(alarm.incident_id, "ack"),
                    encode({"incident_id": alarm.incident_id, "timer": "ack", "due_at": due.isoformat()}),
                    {"Nats-Schedule": at_header(due), "Nats-Schedule-Target": target},
                )
            ]
        )

        async def ring(phone: str) -> int:
            key = f"{alarm.incident_id}-{seq}-{phone}"
            body = encode(
                {
                    "type": "alarm",
                    "incident_id": alarm.incident_id,
                    "recipient": {"phone": phone, "role": "member"},
                    "message": "联防报警：有村民拨打6995求助，请立即响应",
                    "raised_at": alarm.at,
                    "round": seq,
                    "idempotency_key": key,
                }
            )
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "X-Dispatch-Signature": sign(SECRET, body),
                "Idempotency-Key": key,
            }
            status = (await self.poster.post(self.hook, body, headers)).status
            self.counts["webhooks"] += 200 <= status < 300
            return status

        statuses, _ = await asyncio.gather(asyncio.gather(*(ring(p) for p in alarm.recipients)), deadline)
        outcome = encode({"type": "DeliverySucceeded", "incident_id": alarm.incident_id, "statuses": statuses})
        await self.log.publish(
            [(notice_subject(alarm.incident_id), outcome, {"Nats-Msg-Id": f"out-{alarm.incident_id}-{seq}"})]
        )
        self.counts["schedules"] += 1
        self.counts["outcomes"] += 1
        await msg.ack()
        self.counts["acks"] += 1

    async def on_trigger(self, msg: Msg) -> None:
        asyncio.get_running_loop().create_task(self.fan_out(msg))

    async def on_event(self, msg: Msg) -> None:
        self.pending.append(msg)
        if len(self.pending) >= 500:
            self.apply()
        elif self.flushing is None:
            self.flushing = asyncio.get_running_loop().call_later(0.02, self.apply)

    def apply(self) -> None:
        if self.flushing is not None:
            self.flushing.cancel()
            self.flushing = None
        batch, self.pending = self.pending, []
        with self.db:
            for msg in batch:
                event = decode_any(msg.data)
                if event["type"] == "IncidentOpened":
                    self.db.execute(
                        "INSERT OR IGNORE INTO incidents VALUES (?, ?, ?, 0)",
                        (event["incident_id"], event["caller"], event["at"]),
                    )
                    self.db.executemany(
                        "INSERT OR IGNORE INTO alerted VALUES (?, ?, 0)",
                        [(event["incident_id"], p) for p in event["recipients"]],
                    )
                elif event["type"] == "DeliverySucceeded":
                    self.db.execute(
                        "UPDATE incidents SET notified = ? WHERE id = ?", (len(event["statuses"]), event["incident_id"])
                    )
                    self.db.execute("UPDATE alerted SET reached = 1 WHERE incident_id = ?", (event["incident_id"],))
            self.db.execute("UPDATE checkpoint SET seq = ?", (batch[-1].metadata.sequence.stream,))


async def main(hook: str, port: int, workdir: Path, token: str) -> None:
    server = EmbeddedNats(workdir / "floor-nats")
    await server.start()
    (workdir / "floor-nats-pid").write_text(str(server.pid or 0))
    nc = await nats.connect(server.url, **server.auth.connect_kwargs())
    db = sqlite3.connect(workdir / "floor.db", isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS incidents (id TEXT PRIMARY KEY, caller TEXT, at TEXT, notified INT)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS alerted "
        "(incident_id TEXT, phone TEXT, reached INT, PRIMARY KEY (incident_id, phone))"
    )
    db.execute("CREATE TABLE IF NOT EXISTS checkpoint (seq INT)")
    db.execute("INSERT INTO checkpoint VALUES (0)")
    try:
        for stream in (events_stream(1), index_stream(1), timers_stream(1)):
            await ensure_stream(nc, stream)
        await ensure_consumer(nc, FANOUT)
        floor = Floor(nc, hook, token, db)
        js = nc.jetstream()
        await js.subscribe(
            FANOUT.filter_subjects[0],
            queue=FANOUT.durable,
            durable=FANOUT.durable,
            stream=EVENTS_STREAM,
            cb=floor.on_trigger,
            manual_ack=True,
        )
        assert FANOUT.deliver_subject == FANOUT_PUSH
        await js.subscribe(
            EVENTS_ALL,
            ordered_consumer=True,
            cb=floor.on_event,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        config = uvicorn.Config(
            floor.app,
            host="127.0.0.1",
            port=port,
            http="httptools",
            interface="asgi3",
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        web = uvicorn.Server(config)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        serving = asyncio.create_task(web.serve())
        while not web.started:  # noqa: ASYNC110 (uvicorn's Server sets a flag, no event)
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        await stop.wait()
        web.should_exit = True
        await serving
        await floor.poster.close()
        await asyncio.sleep(0.1)  # the read model's last batch (20 ms)
        if floor.pending:
            floor.apply()
        rows = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("incidents", "alerted")}
        print("counts", json.dumps(dict(floor.counts) | rows), flush=True)
    finally:
        await nc.close()
        await server.stop()
        db.close()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]))
