"""The commands the handler layer takes, as the outside faces send them (HTTP, NATS ingress, gateway).

Invariants: a command is a frozen msgspec Struct whose fields are checked on decoding (lengths, types,
time zones), so a handler never sees an unchecked value; a caller string is never refused here (an
unknown or withheld number still raises an alarm for the duty desk).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from dispatch.domain.incident import Action
from dispatch.events.model import Actor, CallChannel, CallStatus
from dispatch.store.eventstore import Recorded


class CallRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A call as the gateway reports it; a caller that is empty (withheld) or no phone number is never refused."""

    call_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    caller: Annotated[str, msgspec.Meta(max_length=64)]
    callee: Annotated[str, msgspec.Meta(max_length=64)] = "6995"
    at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    channel: CallChannel = "voice"
    # a duress signal the gateway recognised itself (the callee is checked against the duress number too)
    silent: bool = False


class ReportRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An incident an officer or duty desk opens for a group: a walk-in report or a 110 transfer.
    `report_id` is the client's idempotency key (the same id always answers the same incident);
    `caller` the reporting person's number if they have one, `caller_name` their name."""

    report_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    village: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    group: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    origin: Literal["walk_in", "transfer_110"]
    caller: Annotated[str, msgspec.Meta(max_length=64)] = ""
    caller_name: Annotated[str, msgspec.Meta(max_length=64)] = ""


class OpenReport(msgspec.Struct, frozen=True, kw_only=True):
    """A ReportRequest with who sends it (token id and name)."""

    request: ReportRequest
    opened_by: str
    opened_by_name: str


class DrillRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A drill on a group (a village's officer or an admin): now, or at `at` (a date and time with its
    zone). `drill_id` is the client's idempotency key (the same id always answers the same drill)."""

    drill_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    village: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    group: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


class OpenDrill(msgspec.Struct, frozen=True, kw_only=True):
    """Open a drill's incident now: the group rung as for a call, every message saying 演练 first;
    `opened_by` and its name say who asked (a scheduled drill: who scheduled it)."""

    drill_id: str
    village: str
    group: str
    opened_by: str
    opened_by_name: str


class DrillResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a drill request: its incident when raised, its time when scheduled."""

    drill_id: str
    status: Literal["raised", "scheduled"]
    incident_id: str | None = None
    due_at: datetime | None = None
    duplicate: bool = False


class CallResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a call: its incident, and whether the call id had been answered before."""

    incident_id: str
    status: CallStatus
    duplicate: bool = False


class ResponseRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An answer to an incident as sent: the responder's number as typed; absent, the number of the
    token's own person (the console's "my number")."""

    action: Action
    responder: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    category: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=500)] = ""
    reason: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """Record `request` on an incident, done by `actor`; the same `idempotency_key` makes a retry
    decide nothing new. Every face names the actor (None only in tests: the responder's own act)."""

    incident_id: str
    request: ResponseRequest
    idempotency_key: str | None = None
    actor: Actor | None = None


class Trigger(msgspec.Struct, frozen=True, kw_only=True):
    """A stored incident decision that may reach people (the fan-out's input); `redelivered` when
    the log hands it over again (a process died or gave up before acknowledging it)."""

    record: Recorded
    redelivered: bool = False


class HeardBroadcast(msgspec.Struct, frozen=True, kw_only=True):
    """A recipient pressed or replied 1 to a broadcast (`broadcast_id` empty: the most recent one still
    waiting for this number's receipt). The handler answers the broadcast id recorded, or None."""

    broadcast_id: str = ""
    phone: str
    via: Literal["keypad", "sms", "console", "api"]
    actor: Actor | None = None
