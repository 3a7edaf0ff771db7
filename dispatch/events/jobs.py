"""A delivery job as it travels on the work queue (stream DISPATCH_DELIVERY, `dispatch.deliver.<channel>`):
its wire format, shared by the fan-out that enqueues it, the queue that stores it and the workers
and channels that take it.

Invariants:
- a job is one alert on one channel and carries every target of it, so a worker rings them all
  at once; a retry job carries only the targets still to reach, not before `not_before`;
- each target's `key` is stable across retries and restarts and goes out as the `Idempotency-Key`;
- an escalation's job names the deadline it answers (`deadline`), so its lateness is measured
  where its targets are handed to the channel;
- a job is JSON as `job_encoder` writes it and `job_decoder` reads it (unknown fields ignored, so a
  job queued by an older or newer version still decodes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from dispatch.events.model import Person

JobKind = Literal["alarm", "unregistered", "repeat", "escalation", "neighbours", "caller_update", "cancelled"]


class Target(msgspec.Struct, frozen=True, kw_only=True):
    recipient: Person
    address: str
    key: str


class Deadline(msgspec.Struct, frozen=True, kw_only=True):
    """The deadline an escalation's job answers: the timer that fell due, the tier, when it was due."""

    timer: str
    tier: int
    due_at: datetime


class DeliveryJob(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    incident_id: str
    round: int
    kind: JobKind
    channel: str
    targets: tuple[Target, ...]
    village: str | None
    group: str | None
    caller: Person
    urgency: int
    message: str
    message_en: str
    answer_url: str
    spoken: str = ""
    console_url: str = ""
    raised_at: datetime
    appended_at: datetime
    attempt: int = 1
    not_before: datetime | None = None
    deadline: Deadline | None = None
    # a drill's job: every channel says 演练 first
    drill: bool = False


job_encoder = msgspec.json.Encoder()
job_decoder = msgspec.json.Decoder(DeliveryJob)
