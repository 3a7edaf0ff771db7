"""What a channel is given (a delivery job) and what it answers (an outcome).

Invariants:
- a job is one recipient, on one channel, to one target (a webhook URL, a phone, a robot);
- its `key` is stable across retries and restarts and goes out as the `Idempotency-Key`;
- a channel never raises for a failed delivery: it answers Delivered, Transient (retry, maybe
  after `retry_after` seconds) or Permanent (do not retry).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

import msgspec

from dispatch.events.model import Person

JobKind = Literal["alarm", "unregistered", "repeat"]


class DeliveryJob(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    incident_id: str
    round: int
    kind: JobKind
    channel: str
    target: str
    recipient: Person
    village: str | None
    group: str | None
    caller: Person
    urgency: int
    message: str
    message_en: str
    answer_url: str
    raised_at: datetime
    appended_at: datetime


class Delivered(msgspec.Struct, frozen=True):
    detail: str = ""


class Transient(msgspec.Struct, frozen=True):
    reason: str
    retry_after: float | None = None


class Permanent(msgspec.Struct, frozen=True):
    reason: str


Outcome = Delivered | Transient | Permanent

job_encoder = msgspec.json.Encoder()
job_decoder = msgspec.json.Decoder(DeliveryJob)


class Channel(Protocol):
    name: str

    def targets(self, recipient: Person) -> list[str]:
        """Where this recipient is reached on this channel; empty when not at all."""
        ...

    async def send(self, job: DeliveryJob) -> Outcome: ...

    async def close(self) -> None: ...


def payload(job: DeliveryJob) -> dict[str, object]:
    """The JSON a webhook receiver (or the console) gets for one notification."""
    return {
        "type": job.kind,
        "incident_id": job.incident_id,
        "village": job.village,
        "group": job.group,
        "caller": {"phone": job.caller.phone, "name": job.caller.name, "role": job.caller.role},
        "recipient": {"phone": job.recipient.phone, "name": job.recipient.name, "role": job.recipient.role},
        "urgency": job.urgency,
        "message": job.message,
        "message_en": job.message_en,
        "answer_url": job.answer_url,
        "raised_at": job.raised_at.isoformat().replace("+00:00", "Z"),
        "round": job.round,
        "idempotency_key": job.key,
    }
