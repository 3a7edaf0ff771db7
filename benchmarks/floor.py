"""The floor of a deadline storm on this stack: the least any Python process must do per tier-1 escalation.

`benchmarks/deadlines.py --floor` runs this in its own process beside the receiver, in the same
round as `dispatch serve`, so the service's lateness can be read against what the stack itself
costs. What it does for each of N incidents whose deadline falls due at one instant, with none of
the service's domain (no folding, no sealing, no read models, no metrics or logs, no consumer
between the decision and the ringing):

- before the due time: an embedded nats-server (fsync always, the log's stream config), and one
  event per incident on its own subject, as an opened incident would have;
- at the due time, all N at once from an in-process clock (as the service's own clock fires them):
  the decision appended on the incident's subject with its expected sequence and a message id,
  through the service's group commit (so a storm's appends go as atomic batches); once stored, the
  three tier-1 webhooks (officer, assistant, duty desk: signed JSON through the service's own
  HTTP client, keep-alive, 200 connections); once answered, the outcome appended;
- prints one JSON line: this process's CPU seconds for the burst and its nats-server's.

    python benchmarks/floor.py HOOK_URL COUNT DUE_EPOCH WORKDIR   (prints "ready" once set up)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
from common import cpu_seconds

from dispatch.channels.http import HttpPoster, sign
from dispatch.cli import event_loop_factory
from dispatch.events.subjects import incident_subject, notice_subject
from dispatch.store.groupcommit import GroupCommit
from dispatch.store.provision import ensure_stream, events_stream
from dispatch.store.server import EmbeddedNats

SECRET = "bench-secret"
TARGETS = ("officer", "assistant", "duty-desk")
encode = msgspec.json.Encoder().encode


async def main(hook: str, count: int, due: float, workdir: Path) -> None:
    server = EmbeddedNats(workdir / "floor-nats")
    await server.start()
    nc = await nats.connect(server.url, **server.auth.connect_kwargs())
    try:
        await ensure_stream(nc, events_stream(1))
        log = GroupCommit(nc, timeout=30.0)
        poster = HttpPoster(timeout=30.0)
        raised = datetime.fromtimestamp(due - 3.0, UTC).isoformat().replace("+00:00", "Z")
        ids = [f"floor{i:06d}" for i in range(count)]
        opened: dict[str, int] = {}
        for chunk in range(0, count, 200):
            answers = await asyncio.gather(
                *(
                    log.publish([(incident_subject(i), encode({"opened": i}), {"Nats-Msg-Id": f"open-{i}"})])
                    for i in ids[chunk : chunk + 200]
                )
            )
            for i, answer in zip(ids[chunk : chunk + 200], answers, strict=True):
                opened[i] = int(answer["seq"])
        print("ready", flush=True)

        async def escalate(incident: str) -> None:
            decided = {"type": "IncidentEscalated", "incident_id": incident, "tier": 1, "reason": "ack_timeout"}
            headers = {"Nats-Msg-Id": f"esc-{incident}", "Nats-Expected-Last-Subject-Sequence": str(opened[incident])}
            stored = await log.publish([(incident_subject(incident), encode(decided), headers)])

            async def ring(target: str) -> int:
                key = f"{incident}-{stored['seq']}-{target}"
                body = encode(
                    {
                        "type": "escalation",
                        "incident_id": incident,
                        "village": "floor",
                        "recipient": {"phone": target, "role": target},
                        "message": "联防组告警未获响应,已升级至派出所",
                        "raised_at": raised,
                        "round": stored["seq"],
                        "idempotency_key": key,
                    }
                )
                headers = {
                    "Content-Type": "application/json; charset=utf-8",
                    "X-Dispatch-Signature": sign(SECRET, body),
                    "Idempotency-Key": key,
                }
                return (await poster.post(hook, body, headers)).status

            statuses = await asyncio.gather(*(ring(t) for t in TARGETS))
            outcome = {"type": "DeliverySucceeded", "incident_id": incident, "statuses": statuses}
            await log.publish([(notice_subject(incident), encode(outcome), {"Nats-Msg-Id": f"out-{incident}"})])

        await asyncio.sleep(max(0.0, due - time.time()))
        server_pids = [server.pid or 0]
        cpu, nats_cpu = cpu_seconds([]), cpu_seconds(server_pids, this_process=False)
        await asyncio.gather(*(escalate(i) for i in ids))
        spent = {"cpu_s": cpu_seconds([]) - cpu, "nats_cpu_s": cpu_seconds(server_pids, this_process=False) - nats_cpu}
        print(json.dumps(spent), flush=True)
        await poster.close()
    finally:
        await nc.close()
        await server.stop()


if __name__ == "__main__":
    factory = event_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])))
