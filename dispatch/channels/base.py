"""What a channel is (`Channel`) and what it answers (an outcome) for each target of a delivery job
(`dispatch.events.jobs`, the job's wire format).

Invariants:
- a channel never raises for a failed delivery: it answers Delivered, Transient (retry, maybe
  after `retry_after` seconds) or Permanent (do not retry);
- what is recorded of a target's address (`recorded_address`) holds no secret a URL carried.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

import msgspec

from dispatch.events.jobs import DeliveryJob, Target
from dispatch.events.model import Person


def recorded_address(address: str) -> str:
    """The address as the log, the read models and the API keep it: a URL loses its userinfo, query
    and fragment (a robot's access key rides in its query), and gains a digest of the whole in their
    place, so two URLs that differ there still differ here; a phone number stays as it is."""
    if not address.startswith(("http://", "https://")):
        return address
    parts = urlsplit(address)
    if not (parts.query or parts.fragment or "@" in parts.netloc):
        return address
    host = parts.netloc.rpartition("@")[2]
    digest = hashlib.sha256(address.encode()).hexdigest()[:12]
    return f"{parts.scheme}://{host}{parts.path}#{digest}"


class Delivered(msgspec.Struct, frozen=True):
    detail: str = ""


class Transient(msgspec.Struct, frozen=True):
    reason: str
    retry_after: float | None = None


class Permanent(msgspec.Struct, frozen=True):
    reason: str


class Withdrawn(msgspec.Struct, frozen=True):
    """Not rung any more: the target answered meanwhile, or the incident was closed."""

    reason: str


Outcome = Delivered | Transient | Permanent | Withdrawn


class Channel(Protocol):
    name: str

    def targets(self, recipient: Person, village: str | None) -> list[str]:
        """Where this recipient (of an incident in `village`) is reached on this channel; empty: not at all."""
        ...

    async def send(self, job: DeliveryJob, target: Target) -> Outcome: ...

    async def close(self) -> None: ...


def payload(job: DeliveryJob, target: Target) -> dict[str, object]:
    """The JSON a webhook receiver gets for one notification."""
    return notification(
        kind=job.kind,
        incident_id=job.incident_id,
        village=job.village,
        group=job.group,
        caller=job.caller,
        recipient=target.recipient,
        urgency=job.urgency,
        message=job.message,
        message_en=job.message_en,
        answer_url=job.answer_url,
        raised_at=job.raised_at,
        round=job.round,
        key=target.key,
    )


def _caller(caller: Person) -> dict[str, object]:
    """The caller as a webhook shows them; where they live when the roster says."""
    shown: dict[str, object] = {"phone": caller.phone, "name": caller.name, "role": caller.role}
    if caller.place is not None:
        shown["place"] = {"address": caller.place.address, "lat": caller.place.lat, "lon": caller.place.lon}
    return shown


def notification(
    *,
    kind: str,
    incident_id: str,
    village: str | None,
    group: str | None,
    caller: Person,
    recipient: Person,
    urgency: int,
    message: str,
    message_en: str,
    answer_url: str,
    raised_at: datetime,
    round: int,
    key: str,
) -> dict[str, object]:
    return {
        "type": kind,
        "incident_id": incident_id,
        "village": village,
        "group": group,
        "caller": _caller(caller),
        "recipient": {"phone": recipient.phone, "name": recipient.name, "role": recipient.role},
        "urgency": urgency,
        "message": message,
        "message_en": message_en,
        "answer_url": answer_url,
        "raised_at": raised_at.isoformat().replace("+00:00", "Z"),
        "round": round,
        "idempotency_key": key,
    }


class AlarmWork(Protocol):
    """Where alarm deliveries say they are in progress, so broadcasts wait (`broadcast.AlarmPriority`)."""

    def alarm(self) -> AbstractContextManager[None]:
        """A block during which an alarm is being delivered."""
        ...

    def hold(self) -> Hold:
        """An alarm in progress until the hold is released (released once, however often asked)."""
        ...


class Hold(Protocol):
    """An alarm in progress until released."""

    def release(self) -> None:
        """End it (once)."""
        ...
