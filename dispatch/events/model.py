"""The event vocabulary: every fact the log can hold.

Invariants:
- events are immutable `msgspec.Struct(frozen=True, kw_only=True)`; their class name is the
  type tag that travels in the `Dispatch-Type` header, `SCHEMA` the version in `Dispatch-Schema`;
- every event carries `at` (UTC, when the service recorded it) and the id of its aggregate, so a
  reader never has to parse a subject;
- phone numbers are E.164 strings; an unregistered caller's number is kept as the gateway sent it;
- an incident's decisions are on `dispatch.evt.incident.<id>` (optimistic concurrency), its
  delivery observations (RespondersNotified, DeliverySucceeded, DeliveryFailed) on
  `dispatch.evt.notice.<id>` (appended without expectations, never racing a decision).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

import msgspec

Role = Literal["household", "leader", "assistant", "officer", "duty", "command_centre", "unregistered"]
MEMBER_ROLES: tuple[Role, ...] = ("household", "leader", "assistant", "officer")
STAFF_ROLES: tuple[Role, ...] = ("leader", "assistant", "officer")

CallChannel = Literal["voice", "sms", "api", "nats"]
Category = Literal["criminal", "public_order", "dispute", "help", "traffic", "fire", "other"]
CATEGORIES: tuple[Category, ...] = ("criminal", "public_order", "dispute", "help", "traffic", "fire", "other")
CancelReason = Literal["caller_safe", "misdial", "duplicate", "drill", "other"]
CallStatus = Literal["raised", "merged", "unregistered"]
FailureKind = Literal["permanent", "exhausted", "withdrawn"]
NeighboursOrder = Literal["alongside", "before", "off"]
NEIGHBOURS_ORDERS: tuple[NeighboursOrder, ...] = ("alongside", "before", "off")
DEFAULT_NEIGHBOURS_ORDER: NeighboursOrder = "alongside"


class Place(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where a household lives: an address as villagers say it, and WGS-84 coordinates (both or
    neither)."""

    address: str = ""
    lat: float | None = None
    lon: float | None = None


class Person(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A number with its name and role; `place` only when the roster gives one (omitted otherwise,
    so a person without one encodes as before); `stands_in_for`: the absent member's number a
    substitute is rung for, in that member's role (empty for everyone else); `language` the voice
    alarms are spoken in (`yue` Cantonese; empty: Mandarin, the default, omitted likewise)."""

    phone: str
    name: str = ""
    role: Role
    place: Place | None = None
    stands_in_for: str = ""
    language: str = ""


ActorChannel = Literal["keypad", "sms", "console", "api", "cli", "system"]
ACTOR_CHANNELS: tuple[ActorChannel, ...] = ("keypad", "sms", "console", "api", "cli", "system")


class Actor(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who recorded an act: the channel it came by, the token used (id and name, if any) and the
    acting person's number (the token's own, or the phone that pressed the keypad or sent the text;
    empty when unknown). An event stored before actors were recorded has none (legacy)."""

    channel: ActorChannel
    token_id: str = ""
    name: str = ""
    phone: str = ""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    SCHEMA: ClassVar[int] = 1
    at: datetime


# --- Group: village code + group number; membership of one joint-defence group -----------------


class GroupEvent(Event, frozen=True, kw_only=True):
    village: str
    group: str
    actor: Actor | None = None


class GroupFormed(GroupEvent, frozen=True, kw_only=True):
    pass


class MemberBound(GroupEvent, frozen=True, kw_only=True):
    phone: str
    name: str
    role: Role


class MemberUnbound(GroupEvent, frozen=True, kw_only=True):
    phone: str


class RoleAssigned(GroupEvent, frozen=True, kw_only=True):
    phone: str
    role: Role


class MemberRenamed(GroupEvent, frozen=True, kw_only=True):
    phone: str
    name: str


class MemberPlaced(GroupEvent, frozen=True, kw_only=True):
    """A member's address and coordinates (None: the roster no longer gives one)."""

    phone: str
    place: Place | None = None


class MemberLanguageSet(GroupEvent, frozen=True, kw_only=True):
    """The language a member's voice alarms are spoken in (`yue`; empty: back to Mandarin, the default)."""

    phone: str
    language: str = ""


class GroupDissolved(GroupEvent, frozen=True, kw_only=True):
    pass


# --- Village: the station duty desks that serve it -----------------------------------------------


class VillageEvent(Event, frozen=True, kw_only=True):
    village: str
    actor: Actor | None = None


class DutyDeskBound(VillageEvent, frozen=True, kw_only=True):
    phone: str
    name: str


class DutyDeskUnbound(VillageEvent, frozen=True, kw_only=True):
    phone: str


class VillageSettingsChanged(VillageEvent, frozen=True, kw_only=True):
    """Deadlines for this village's incidents (None: the service default), applied at raise time;
    the IANA time zone its reports are shown in (None: the service default); whether an answer
    recorded for someone else (a proxy answer) counts toward cover (None: it does)."""

    ack_deadline_s: float | None = None
    escalate_after_s: float | None = None
    arrival_deadline_s: float | None = None
    time_zone: str | None = None
    proxy_counts: bool | None = None
    # the neighbouring groups' tier: `alongside` the station, `before` it, or `off` (None: the
    # service default, `alongside`);
    # whether a neighbour's accept covers as the leader half (None: it does not); each group's
    # neighbours within the village (None: the four groups nearest in their numbering)
    neighbours_order: NeighboursOrder | None = None
    neighbour_covers: bool | None = None
    neighbours: dict[str, tuple[str, ...]] | None = None


# --- Member: one number's absences (leave, training), whichever groups it serves ------------------


class MemberEvent(Event, frozen=True, kw_only=True):
    phone: str
    actor: Actor | None = None


class AbsenceSet(MemberEvent, frozen=True, kw_only=True):
    """The member is away from `starts` until `until` (UTC, end excluded): not rung meanwhile; the
    `substitute` (None: nobody) is rung in their place, in the member's role in each group. It
    replaces any absence set before."""

    starts: datetime
    until: datetime
    substitute: str | None = None
    substitute_name: str = ""
    note: str = ""


class AbsenceEnded(MemberEvent, frozen=True, kw_only=True):
    """The member's absence ended early (or was called off before it began)."""


# --- Alarm line: at most one open incident per group, per multi-group caller, per unknown number --


class LineEvent(Event, frozen=True, kw_only=True):
    line: str
    incident_id: str


class LineClosed(LineEvent, frozen=True, kw_only=True):
    """The line's incident of `epoch` is closed: the next call opens epoch + 1."""

    epoch: int


# --- Call: what one gateway call id was routed to (idempotency beyond the duplicate window) ------


class CallRouted(Event, frozen=True, kw_only=True):
    call_id: str
    incident_id: str
    status: CallStatus


# --- Incident ------------------------------------------------------------------------------------


class IncidentEvent(Event, frozen=True, kw_only=True):
    incident_id: str


class IncidentOpened(IncidentEvent, frozen=True, kw_only=True):
    """Common shape of the two events that start an incident. `relaxed`: the cover policy's clauses
    nobody but the caller (or nobody at all) could meet, dropped from `quorum` (None: recorded before
    this was kept); `proxy_counts`: whether a proxy answer counts toward cover (the village's setting
    at raise time)."""

    line: str
    epoch: int
    village: str | None
    group: str | None
    caller: Person
    call_id: str
    channel: CallChannel
    callee: str
    called_at: datetime
    recipients: tuple[Person, ...]
    duty_desks: tuple[Person, ...]
    quorum: tuple[tuple[Role, ...], ...]
    ack_deadline_s: float = 60.0
    escalate_after_s: float = 300.0
    arrival_deadline_s: float = 1200.0
    # a duress alarm: only officers, assistants and duty desks are alerted; the caller never hears back
    silent: bool = False
    # opened by an officer or duty desk, not by a call: "walk_in" or "transfer_110" ("" for a call),
    # and who opened it (token id and name)
    origin: str = ""
    opened_by: str = ""
    opened_by_name: str = ""
    relaxed: tuple[tuple[Role, ...], ...] | None = None
    proxy_counts: bool = True
    # the neighbouring groups' leaders and assistants, each with their group in `neighbour_groups` (the
    # same order; the village's setting at raise time): alerted
    # when the group cannot reach cover, `alongside` or `before` the station (`off`: never, as before)
    neighbours: tuple[Person, ...] = ()
    neighbour_groups: tuple[str, ...] = ()
    neighbours_order: NeighboursOrder = "off"
    neighbour_covers: bool = False
    # members away at raise time: not rung (their substitutes are, among `recipients`); they may
    # still answer, in their own role
    absent: tuple[Person, ...] = ()


class AlarmRaised(IncidentOpened, frozen=True, kw_only=True):
    pass


class UnregisteredCall(IncidentOpened, frozen=True, kw_only=True):
    pass


class CallRepeated(IncidentEvent, frozen=True, kw_only=True):
    call_id: str
    caller: Person
    channel: CallChannel
    called_at: datetime
    urgency: int
    realerted: tuple[Person, ...] = ()


class RespondersNotified(IncidentEvent, frozen=True, kw_only=True):
    """The alert of `round` was queued on `channel` for these recipients (one event per job: the
    log is fsynced per message, so per-recipient events would multiply the cost of an alarm).
    Delivery observations live on `dispatch.evt.notice.<incident>`, apart from the decisions.
    Since the fan-out's first attempt records its outcome with `handed_at`, this event is written
    only for the targets of that attempt left to a retry; older logs hold one per job.
    `simulated` (here and in the outcomes): the channel was the gateway simulator's virtual phones
    (`dispatch serve --simulate-phones`), which no real person hears."""

    channel: str
    round: int
    phones: tuple[str, ...]
    simulated: bool = False


class Reached(msgspec.Struct, frozen=True, kw_only=True):
    phone: str
    address: str = ""


class Unreached(msgspec.Struct, frozen=True, kw_only=True):
    phone: str
    address: str = ""
    kind: FailureKind
    reason: str


class DeliverySucceeded(IncidentEvent, frozen=True, kw_only=True):
    """`handed_at` is set on the fan-out's first attempt: when the alert was handed to the channel.
    Such an outcome is also the notice of its targets (no RespondersNotified is written for them)."""

    channel: str
    round: int
    attempt: int = 1
    targets: tuple[Reached, ...]
    handed_at: datetime | None = None
    simulated: bool = False


class DeliveryFailed(IncidentEvent, frozen=True, kw_only=True):
    """Targets given up on: `permanent` (never retried), `exhausted` (every attempt failed) or
    `withdrawn` (a retry not rung: the target answered meanwhile or the incident was closed).
    `handed_at` as in DeliverySucceeded: set on the fan-out's first attempt, then also the notice."""

    channel: str
    round: int
    attempt: int = 1
    failures: tuple[Unreached, ...]
    handed_at: datetime | None = None
    simulated: bool = False


class ResponderAccepted(IncidentEvent, frozen=True, kw_only=True):
    """`actor` recorded it (None: stored before actors were kept); `proxy` when the actor is not
    the responder (an answer taken for them); `neighbour_group` when the responder came from a
    neighbouring group."""

    phone: str
    role: Role
    name: str = ""
    first: bool = False
    actor: Actor | None = None
    proxy: bool = False
    neighbour_group: str = ""


class ResponderDeclined(IncidentEvent, frozen=True, kw_only=True):
    phone: str
    role: Role
    note: str = ""
    actor: Actor | None = None
    proxy: bool = False


class ResponderArrived(IncidentEvent, frozen=True, kw_only=True):
    phone: str
    role: Role
    actor: Actor | None = None
    proxy: bool = False


CoverKind = Literal["full", "relaxed"]


class IncidentCovered(IncidentEvent, frozen=True, kw_only=True):
    """`accepted_by`: the accepters whose answers met the quorum, each half by a different actor;
    `kind`: `relaxed` when a clause of the cover policy was dropped at raise time (e.g. the leader
    is the caller and the group has no assistant), else `full` (None: stored before this was kept);
    `by_proxy`: an answer that met a clause was a proxy answer."""

    accepted_by: tuple[str, ...]
    kind: CoverKind | None = None
    relaxed: tuple[tuple[Role, ...], ...] = ()
    by_proxy: bool = False


EscalationReason = Literal[
    "ack_deadline", "escalate_deadline", "arrival_deadline", "officer_unreachable", "station_deadline"
]


class IncidentEscalated(IncidentEvent, frozen=True, kw_only=True):
    """Tier 1: the officer and assistant are alerted again and the duty desk notified; tier 2: the
    county command centre. `alerted` is whom this escalation rings (decided here, rung by the fan-out)."""

    tier: int
    reason: EscalationReason
    alerted: tuple[Person, ...] = ()


NeighboursReason = Literal["ack_deadline", "escalate_deadline", "quorum_unreachable"]


class NeighboursAlerted(IncidentEvent, frozen=True, kw_only=True):
    """The group cannot reach cover (its ack deadline passed uncovered, or its reachable members can
    no longer meet the quorum): the neighbouring groups' leaders and assistants are alerted, a tier
    of its own beside or before the station's."""

    reason: NeighboursReason
    alerted: tuple[Person, ...] = ()
    groups: tuple[str, ...] = ()


class IncidentResolved(IncidentEvent, frozen=True, kw_only=True):
    by: str
    category: Category
    note: str = ""
    actor: Actor | None = None
    proxy: bool = False


class IncidentCancelled(IncidentEvent, frozen=True, kw_only=True):
    by: str
    reason: CancelReason
    note: str = ""
    actor: Actor | None = None
    proxy: bool = False


# --- Drill: a drill set for a group at a date and time (a drill raised now is just an incident) ----


class DrillEvent(Event, frozen=True, kw_only=True):
    drill_id: str


class DrillScheduled(DrillEvent, frozen=True, kw_only=True):
    """A drill set on a group for `due_at` by `opened_by` (token id and name); a NATS message
    schedule starts it then."""

    village: str
    group: str
    due_at: datetime
    opened_by: str = ""
    opened_by_name: str = ""
    actor: Actor | None = None


class DrillStarted(DrillEvent, frozen=True, kw_only=True):
    """The drill's time came: its incident (origin `drill`) is open."""

    incident_id: str


class DrillCancelled(DrillEvent, frozen=True, kw_only=True):
    """The drill was called off before it started."""

    actor: Actor | None = None


# --- Broadcast: a warning to every member of one or more villages, with a "press 1 when heard" receipt --

BroadcastKind = Literal["typhoon", "flood", "missing_child", "other"]
BROADCAST_KINDS: tuple[BroadcastKind, ...] = ("typhoon", "flood", "missing_child", "other")
ReceiptVia = Literal["keypad", "sms", "console", "api"]


class BroadcastEvent(Event, frozen=True, kw_only=True):
    broadcast_id: str


class BroadcastStarted(BroadcastEvent, frozen=True, kw_only=True):
    """A warning to every member of `villages` on `channels`; its `total` recipients follow in
    BroadcastAddressed pages of the same decision (a county's 100k numbers do not fit one message)."""

    villages: tuple[str, ...]
    kind: BroadcastKind
    message: str
    channels: tuple[str, ...]
    total: int
    pages: int
    actor: Actor | None = None


class BroadcastAddressed(BroadcastEvent, frozen=True, kw_only=True):
    """Page `page` of the broadcast's recipients, each number once across all pages."""

    page: int
    people: tuple[Person, ...]


class BroadcastHanded(BroadcastEvent, frozen=True, kw_only=True):
    """One chunk of the broadcast was handed to `channel` (`phones`) or given up on (`failures`);
    kept on `dispatch.evt.broadcast.<id>.out`, apart from the decisions, like an incident's notices."""

    channel: str
    chunk: int
    attempt: int = 1
    phones: tuple[str, ...] = ()
    failures: tuple[Unreached, ...] = ()


class BroadcastHeard(BroadcastEvent, frozen=True, kw_only=True):
    """A recipient confirmed they heard the warning (pressed 1 on the call, replied 1 by SMS)."""

    phone: str
    via: ReceiptVia
    actor: Actor | None = None


# --- Access tokens: stored as a hash, never as the secret ------------------------------------------

TokenRole = Literal["gateway", "officer", "duty_desk", "admin", "metrics"]


class TokenIssued(Event, frozen=True, kw_only=True):
    """`phone`: the number of the person the token was issued to (an answer through it for that
    number is their own, for any other a proxy answer); `actor`: who issued it."""

    token_id: str
    name: str
    role: TokenRole
    villages: tuple[str, ...] = ()
    station: str | None = None
    secret_hash: str
    phone: str | None = None
    actor: Actor | None = None


class TokenRevoked(Event, frozen=True, kw_only=True):
    token_id: str
    actor: Actor | None = None


ALL_EVENT_TYPES: tuple[type[Event], ...] = (
    GroupFormed,
    MemberBound,
    MemberUnbound,
    RoleAssigned,
    MemberRenamed,
    MemberPlaced,
    MemberLanguageSet,
    GroupDissolved,
    DutyDeskBound,
    DutyDeskUnbound,
    VillageSettingsChanged,
    AbsenceSet,
    AbsenceEnded,
    LineClosed,
    CallRouted,
    AlarmRaised,
    UnregisteredCall,
    CallRepeated,
    RespondersNotified,
    DeliverySucceeded,
    DeliveryFailed,
    ResponderAccepted,
    ResponderDeclined,
    ResponderArrived,
    IncidentCovered,
    IncidentEscalated,
    NeighboursAlerted,
    IncidentResolved,
    IncidentCancelled,
    DrillScheduled,
    DrillStarted,
    DrillCancelled,
    TokenIssued,
    TokenRevoked,
    BroadcastStarted,
    BroadcastAddressed,
    BroadcastHanded,
    BroadcastHeard,
)
