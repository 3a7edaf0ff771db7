"""Deadlines as JetStream message schedules: they fire in the server, whatever happens to us.

A schedule is a message on `dispatch.sched.incident.<id>.<timer>` carrying
`Nats-Schedule: @at <RFC 3339 UTC, milliseconds>` and a target `dispatch.timer.incident.<id>.<timer>`
in the same stream (DISPATCH_TIMERS, `allow_msg_schedules`). At that time the server publishes the
body to the target, where the timers consumer takes it.

Invariants:
- a subject holds one schedule: scheduling the same timer again replaces it (the same due time is
  a no-op), so re-scheduling on a redelivered trigger is safe; a due time in the past fires at once;
- an unreachable server is StoreUnavailable, and the caller does not acknowledge its trigger.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from dispatch.events.subjects import schedule_subject, timer_fired_subject
from dispatch.store.batch import publish_one
from dispatch.store.eventstore import AppendRejected, StoreUnavailable


class TimerDue(msgspec.Struct, frozen=True, kw_only=True):
    """A deadline as scheduled and fired: the incident, the timer, when it was due."""

    incident_id: str
    timer: str
    due_at: datetime


timer_encoder = msgspec.json.Encoder()
timer_decoder = msgspec.json.Decoder(TimerDue)


def at_header(due: datetime) -> str:
    """The `Nats-Schedule` value for a due time."""
    return "@at " + due.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


class Timers:
    """Sets deadlines as JetStream message schedules."""

    def __init__(self, nc: NATS, *, timeout: float = 3.0) -> None:
        self.nc = nc
        self.timeout = timeout

    async def schedule(self, incident_id: str, timer: str, due: datetime) -> None:
        """Set (or replace) the incident's timer to fire at `due`."""
        if not self.nc.is_connected:
            raise StoreUnavailable("timers unavailable: not connected to NATS")
        body = timer_encoder.encode(TimerDue(incident_id=incident_id, timer=timer, due_at=due))
        headers = {
            "Nats-Schedule": at_header(due),
            "Nats-Schedule-Target": timer_fired_subject(incident_id, timer),
        }
        try:
            ack = await publish_one(self.nc, schedule_subject(incident_id, timer), body, headers, timeout=self.timeout)
        except (NatsTimeout, NoRespondersError, ConnectionClosedError) as exc:
            raise StoreUnavailable(f"timers unavailable: {type(exc).__name__}") from exc
        if "error" in ack:
            raise AppendRejected(f"{ack['error'].get('err_code')}: {ack['error'].get('description')}")
