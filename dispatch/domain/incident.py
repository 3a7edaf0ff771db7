"""The incident aggregate: from one call to covered, on scene and resolved (or cancelled).

Lifecycle: raised -> notifying -> acknowledged -> on_scene -> resolved | cancelled;
escalation (tier n) may happen at any open point.

Invariants:
- only the people the incident was raised for may answer: its recipients, the village duty
  desks, and the caller (who may only cancel);
- one responder's accept never silences another's (multi-ack); the incident is covered once
  every quorum clause is met by some accepter's role (default: officer, and leader or
  assistant), each clause by a **different actor** (one token or one phone never meets two
  clauses, whoever it answered for), and IncidentCovered is emitted exactly once;
- every answer records its actor; one whose actor is not the responder is a proxy answer, and
  counts toward cover only when the incident was raised with `proxy_counts` (the village's
  setting, default yes); an own answer after proxy ones is recorded too (it may meet cover);
- a clause of the cover policy that nobody but the caller (or nobody) could meet is dropped at
  raise time and recorded in `relaxed`; a cover met without it is a *relaxed* cover and says so;
- a resolved or cancelled incident takes no further answer (409 with the reason), and closing it
  closes its line (LineClosed{epoch}), so the line's next call opens the next epoch's incident;
- an incident's id is a function of its line and epoch: concurrent openers agree on it;
- repeating an answer already recorded decides nothing (idempotent), so a retried request is safe;
- `evolve` never fails: it folds whatever the log holds;
- one decision shape: an incident decides every command as `decide(state, command, now)`, a call's
  line as `decide_call(line, call, now)`; the rule functions below them are pure and take no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, cast

import msgspec

from dispatch.domain.absence import stand_ins
from dispatch.domain.directory import Deadlines, Directory, GroupState, Membership
from dispatch.domain.errors import InvalidCommand, InvalidTransition, NotFound, NotPermitted
from dispatch.events.model import (
    CATEGORIES,
    STAFF_ROLES,
    Actor,
    AlarmRaised,
    CallChannel,
    CallRepeated,
    CallRouted,
    CallStatus,
    CancelReason,
    Category,
    DeliveryFailed,
    DeliverySucceeded,
    EscalationReason,
    Event,
    IncidentCancelled,
    IncidentCovered,
    IncidentEscalated,
    IncidentEvent,
    IncidentOpened,
    IncidentResolved,
    LineClosed,
    NeighboursAlerted,
    NeighboursOrder,
    NeighboursReason,
    Person,
    ResponderAccepted,
    ResponderArrived,
    ResponderDeclined,
    RespondersNotified,
    Role,
    Unreached,
    UnregisteredCall,
)
from dispatch.events.subjects import caller_line, group_line, village_line
from dispatch.ids import stable_key

Status = Literal["raised", "notifying", "acknowledged", "on_scene", "resolved", "cancelled"]
Action = Literal["accept", "decline", "arrived", "resolve", "cancel"]
ACTIONS: tuple[Action, ...] = ("accept", "decline", "arrived", "resolve", "cancel")
CLOSED: tuple[Status, ...] = ("resolved", "cancelled")
Quorum = tuple[tuple[Role, ...], ...]
DEFAULT_QUORUM = "officer,leader|assistant"
REALERT_INTERVAL = timedelta(seconds=30)
DEFAULT_DEADLINES = Deadlines()
_ROLE_ORDER: dict[str, int] = {"officer": 0, "assistant": 1, "leader": 2, "household": 3, "duty": 4}


def parse_quorum(text: str) -> Quorum:
    """`officer,leader|assistant` -> ((officer,), (leader, assistant)); raise ValueError on bad roles."""
    allowed = {"household", "leader", "assistant", "officer", "duty"}
    clauses: list[tuple[Role, ...]] = []
    for clause in text.split(","):
        roles = tuple(r.strip() for r in clause.split("|") if r.strip())
        if not roles:
            continue
        bad = [r for r in roles if r not in allowed]
        if bad:
            raise ValueError(f"unknown role(s) in quorum {text!r}: {', '.join(bad)}")
        clauses.append(cast(tuple[Role, ...], roles))
    return tuple(clauses)


def effective_quorum(policy: Quorum, people: tuple[Person, ...]) -> Quorum:
    """Drop the clauses nobody who may answer could ever meet (e.g. the caller is the only leader)."""
    roles = {p.role for p in people}
    return tuple(clause for clause in policy if roles.intersection(clause))


def relaxed_clauses(policy: Quorum, people: tuple[Person, ...]) -> Quorum:
    """The clauses `effective_quorum` drops: nobody who may answer could ever meet them."""
    roles = {p.role for p in people}
    return tuple(clause for clause in policy if not roles.intersection(clause))


def quorum_met(quorum: Quorum, accepted_roles: set[Role]) -> bool:
    """Whether the accepted roles meet every clause of the quorum."""
    if not quorum:
        return bool(accepted_roles)
    return all(accepted_roles.intersection(clause) for clause in quorum)


@dataclass(frozen=True, slots=True)
class Answered:
    """One accept as cover counts it: whose (phone, role), recorded by which actor, and whether
    for someone else (proxy)."""

    phone: str
    role: Role
    actor: str
    proxy: bool


def actor_key(actor: Actor | None, responder: str) -> str:
    """Who an act was done by, as cover tells people apart: the acting person's number when known,
    else the token, else the channel; an act recorded before actors were kept counts as the
    responder's own."""
    if actor is None:
        return f"phone:{responder}"
    if actor.phone:
        return f"phone:{actor.phone}"
    if actor.token_id:
        return f"token:{actor.token_id}"
    return f"channel:{actor.channel}"


def is_proxy(actor: Actor | None, responder: str) -> bool:
    """Whether an act for `responder` was recorded by someone else (legacy acts count as own)."""
    return actor is not None and actor.phone != responder


def cover_by(quorum: Quorum, answers: Iterable[Answered], *, proxy_counts: bool = True) -> list[Answered] | None:
    """The answers that meet every clause, each clause by a different person and a different actor
    (None: not met). Proxy answers count only with `proxy_counts`. An empty quorum: any answer."""
    usable = [a for a in answers if proxy_counts or not a.proxy]
    if not quorum:
        return usable[:1] or None
    chosen: list[Answered] = []

    def fill(i: int) -> bool:
        if i == len(quorum):
            return True
        for a in usable:
            if a.role not in quorum[i]:
                continue
            if any(c.phone == a.phone or c.actor == a.actor for c in chosen):
                continue
            chosen.append(a)
            if fill(i + 1):
                return True
            chosen.pop()
        return False

    return list(chosen) if fill(0) else None


# --- Routing a call -------------------------------------------------------------------------------


class IncomingCall(msgspec.Struct, frozen=True, kw_only=True):
    """A call as ingress hands it to the decider; `caller` is E.164 when the number parsed."""

    call_id: str
    caller_raw: str
    caller: str | None
    callee: str
    channel: CallChannel
    called_at: datetime
    at: datetime
    silent: bool = False
    # an incident an officer or duty desk opens (a walk-in, a 110 transfer) for a group of its choice
    for_group: tuple[str, str] | None = None
    caller_name: str = ""
    origin: str = ""
    opened_by: str = ""
    opened_by_name: str = ""


ORIGINS: tuple[str, ...] = ("walk_in", "transfer_110")
DRILL = "drill"
# a drill's escalation stops at the station duty desk (tier 1), never the county (tier 2)
DRILL_TOP_TIER = 1


def is_drill(opened: IncidentOpened) -> bool:
    """Whether an incident is a drill (raised by `POST /v1/drills` or a scheduled drill)."""
    return opened.origin == DRILL


SILENT_ROLES: tuple[Role, ...] = ("officer", "assistant", "duty")


@dataclass(frozen=True, slots=True)
class Route:
    """Who a call is for: its line, village, group, caller, recipients, duty desks, quorum, deadlines."""

    kind: Literal["group", "village", "unregistered"]
    line: str
    village: str | None
    group: str | None
    caller: Person
    recipients: tuple[Person, ...]
    duty_desks: tuple[Person, ...]
    quorum: Quorum
    deadlines: Deadlines = DEFAULT_DEADLINES
    silent: bool = False
    relaxed: Quorum = ()
    proxy_counts: bool = True
    absent: tuple[Person, ...] = ()
    neighbours: tuple[Person, ...] = ()
    neighbour_groups: tuple[str, ...] = ()
    neighbours_order: NeighboursOrder = "off"
    neighbour_covers: bool = False


NEIGHBOUR_ROLES: tuple[Role, ...] = ("leader", "assistant")


def silent_route(route: Route) -> Route:
    """A duress call's route: a line of its own (never merged into the group's open incident, whose
    households are rung), only officers, assistants and duty desks alerted, the quorum they can meet."""
    recipients = _ordered([p for p in (*route.recipients, *route.duty_desks) if p.role in SILENT_ROLES])
    quorum = effective_quorum(route.quorum, recipients) if route.kind == "group" else route.quorum
    relaxed = route.relaxed + relaxed_clauses(route.quorum, recipients) if route.kind == "group" else route.relaxed
    # a duress alarm is told to no other group: its neighbours are never alerted
    return replace(
        route,
        line=f"silent.{route.line}",
        recipients=recipients,
        quorum=quorum,
        silent=True,
        relaxed=relaxed,
        neighbours=(),
        neighbour_groups=(),
        neighbours_order="off",
    )


def _ordered(people: list[Person]) -> tuple[Person, ...]:
    unique = {p.phone: p for p in people}
    return tuple(sorted(unique.values(), key=lambda p: (_ROLE_ORDER.get(p.role, 9), p.phone)))


def route_call(
    directory: Directory,
    call: IncomingCall,
    policy: Quorum,
    fallback_duty: tuple[Person, ...],
    defaults: Deadlines = DEFAULT_DEADLINES,
) -> Route:
    """Decide who a call is for. A number in no group is routed to the duty desk, never dropped; a
    duress call (`call.silent`) to its officers, assistants and duty desks only; an incident an
    officer opens for a group (`call.for_group`) rings that group on a line of its own."""
    if call.for_group is not None:
        group, caller = _reported(directory, call.for_group, call)
        line = f"report.{stable_key('report', call.call_id)}"
        route = _group_route(directory, group, group.members, caller, line, policy, fallback_duty, defaults, call.at)
    else:
        memberships = directory.memberships(call.caller) if call.caller else []
        if len(memberships) == 1:
            m = memberships[0]
            line = group_line(m.group.village, m.group.group)
            route = _group_route(
                directory, m.group, m.members, m.person, line, policy, fallback_duty, defaults, call.at
            )
        elif memberships:
            route = _village_route(directory, memberships, policy, fallback_duty, defaults, call.at)
        else:
            route = _unregistered_route(call, fallback_duty, defaults)
    return silent_route(route) if call.silent else route


def _on_duty(directory: Directory, members: Iterable[Person], now: datetime) -> tuple[list[Person], list[Person]]:
    """(rung, absent) at `now`: members away replaced by their substitutes (see `absence.stand_ins`)."""
    if not directory.absences:
        return list(members), []

    def known(phone: str) -> Person | None:
        found = directory.memberships(phone)
        return found[0].person if found else None

    return stand_ins(members, directory.absences, now, known)


def _reported(directory: Directory, for_group: tuple[str, str], call: IncomingCall) -> tuple[GroupState, Person]:
    """The group an officer opens an incident for, and its caller as the roster knows them, else as
    told (a walk-in need not be a member)."""
    village, group_name = for_group
    group = directory.group(village, group_name)
    if group is None:
        raise NotFound(f"no group {village}/{group_name}")
    phone = call.caller or call.caller_raw
    caller = group.members.get(phone) if phone else None
    return group, caller or Person(phone=phone, name=call.caller_name, role="unregistered")


def _group_route(
    directory: Directory,
    group: GroupState,
    members: dict[str, Person],
    caller: Person,
    line: str,
    policy: Quorum,
    fallback_duty: tuple[Person, ...],
    defaults: Deadlines,
    now: datetime,
) -> Route:
    """A group's members (but the caller) and its village's duty desks alerted, by the village's
    deadlines and proxy setting; a cover clause nobody alerted (nor an absent member) could meet is
    relaxed. A member away at `now` is not alerted, their substitute is, in their role."""
    present, away = _on_duty(directory, (p for p in members.values() if p.phone != caller.phone), now)
    recipients = _ordered([p for p in present if p.phone != caller.phone])
    absent = tuple(away)
    duty = directory.duty_desks(group.village) or fallback_duty
    taken = {caller.phone, *(p.phone for p in recipients), *(p.phone for p in duty)}
    order = directory.neighbours_order(group.village)
    neighbours = [] if order == "off" else neighbours_of(directory, group, taken, now)
    return Route(
        kind="group",
        line=line,
        village=group.village,
        group=group.group,
        caller=caller,
        recipients=recipients,
        duty_desks=duty,
        quorum=effective_quorum(policy, recipients + duty + absent),
        deadlines=directory.deadlines(group.village, defaults),
        relaxed=relaxed_clauses(policy, recipients + duty + absent),
        proxy_counts=directory.proxy_counts(group.village),
        absent=absent,
        neighbours=tuple(person for person, _ in neighbours),
        neighbour_groups=tuple(name for _, name in neighbours),
        neighbours_order=order,
        neighbour_covers=directory.neighbour_covers(group.village),
    )


def neighbours_of(directory: Directory, group: GroupState, taken: set[str], now: datetime) -> list[tuple[Person, str]]:
    """The leaders and assistants (on duty at `now`: a substitute for one away) of a group's
    neighbouring groups, each once with their group, leaving out anyone the incident reaches already."""
    found: dict[str, tuple[Person, str]] = {}
    for other in directory.neighbour_groups(group.village, group.group):
        staff = [p for p in other.members.values() if p.role in NEIGHBOUR_ROLES]
        present, _ = _on_duty(directory, staff, now)
        for person in _ordered(present):
            if person.phone not in taken and person.phone not in found:
                found[person.phone] = (person, other.group)
    return list(found.values())


def neighbour_pairs(opened: IncidentOpened) -> list[tuple[Person, str]]:
    """An incident's neighbours with their groups."""
    return list(zip(opened.neighbours, opened.neighbour_groups, strict=False))


def _village_route(
    directory: Directory,
    memberships: list[Membership],
    policy: Quorum,
    fallback_duty: tuple[Person, ...],
    defaults: Deadlines,
    now: datetime,
) -> Route:
    """A number in several groups: the staff of its groups in its (first) village (substitutes for
    those away at `now`) and the duty desks."""
    village = memberships[0].group.village
    caller = memberships[0].person
    present, away = _on_duty(
        directory,
        (
            p
            for m in memberships
            if m.group.village == village
            for p in m.members.values()
            if p.role in STAFF_ROLES and p.phone != caller.phone
        ),
        now,
    )
    staff = [p for p in present if p.phone != caller.phone]
    duty = directory.duty_desks(village) or fallback_duty
    duty = tuple(d for d in duty if d.phone != caller.phone)
    return Route(
        kind="village",
        line=village_line(village),
        village=village,
        group=None,
        caller=caller,
        recipients=_ordered([*staff, *duty]),
        duty_desks=duty,
        quorum=(("duty",),) if duty else effective_quorum(policy, tuple(staff)),
        deadlines=directory.deadlines(village, defaults),
        relaxed=() if duty else relaxed_clauses(policy, tuple(staff)),
        proxy_counts=directory.proxy_counts(village),
        absent=tuple({p.phone: p for p in away}.values()),
    )


def _unregistered_route(call: IncomingCall, fallback_duty: tuple[Person, ...], defaults: Deadlines) -> Route:
    """A number in no group: the fallback duty desks, never dropped."""
    duty = tuple(d for d in fallback_duty if d.phone != call.caller)
    return Route(
        kind="unregistered",
        line=caller_line(call.caller or call.caller_raw, call.call_id),
        village=None,
        group=None,
        caller=Person(phone=call.caller or call.caller_raw, name="", role="unregistered"),
        recipients=duty,
        duty_desks=duty,
        quorum=(("duty",),) if duty else (),
        deadlines=defaults,
    )


def incident_id_for(line: str, epoch: int) -> str:
    """The id of a line's incident of one epoch: every process computes the same one, so two
    callers of one group racing to open an incident write the same subject and one of them wins."""
    return stable_key("incident", line, epoch)


def open_incident(route: Route, call: IncomingCall, epoch: int) -> IncidentOpened:
    """The event that opens the line's incident of `epoch` for this call."""
    kind = UnregisteredCall if route.kind == "unregistered" else AlarmRaised
    return kind(
        at=call.at,
        incident_id=incident_id_for(route.line, epoch),
        line=route.line,
        epoch=epoch,
        village=route.village,
        group=route.group,
        caller=route.caller,
        call_id=call.call_id,
        channel=call.channel,
        callee=call.callee,
        called_at=call.called_at,
        recipients=route.recipients,
        duty_desks=route.duty_desks,
        quorum=route.quorum,
        ack_deadline_s=route.deadlines.ack_s,
        escalate_after_s=route.deadlines.escalate_s,
        arrival_deadline_s=route.deadlines.arrival_s,
        silent=route.silent,
        origin=call.origin,
        opened_by=call.opened_by,
        opened_by_name=call.opened_by_name,
        relaxed=route.relaxed,
        proxy_counts=route.proxy_counts,
        neighbours=route.neighbours,
        neighbour_groups=route.neighbour_groups,
        neighbours_order=route.neighbours_order,
        neighbour_covers=route.neighbour_covers,
        absent=route.absent,
    )


def repeat_call(state: IncidentState, call: IncomingCall, caller: Person) -> CallRepeated:
    """Merge a call into the open incident: urgency rises; who has not answered and was not alerted
    in the last 30 s is alerted again (recorded in the event, so the limit holds under any race)."""
    if state.closed:
        raise InvalidTransition(f"incident {state.id} is {state.status}")
    realert = tuple(
        r.person
        for r in state.responders.values()
        if r.recipient
        and not r.answered
        and r.person.phone != caller.phone
        and (r.last_alerted_at is None or call.at - r.last_alerted_at >= REALERT_INTERVAL)
    )
    return CallRepeated(
        at=call.at,
        incident_id=state.id,
        call_id=call.call_id,
        caller=caller,
        channel=call.channel,
        called_at=call.called_at,
        urgency=state.urgency + 1,
        realerted=realert,
    )


AlertReason = Literal["raised", "repeat", "escalation", "neighbours", "caller_update", "cancelled"]


@dataclass(frozen=True, slots=True)
class Alert:
    """Whom a decision alerts now, with what the message needs (not an event: a view of one)."""

    incident_id: str
    reason: AlertReason
    recipients: tuple[Person, ...]
    village: str | None
    group: str | None
    caller: Person
    registered: bool
    urgency: int
    raised_at: datetime
    tier: int = 0
    why: str = ""
    accepted_by: Person | None = None
    covered: bool = False
    silent: bool = False
    origin: str = ""
    opened_by_name: str = ""

    @property
    def drill(self) -> bool:
        """A drill's alert: every message says 演练 first."""
        return self.origin == DRILL


Trigger = (
    IncidentOpened
    | CallRepeated
    | IncidentEscalated
    | NeighboursAlerted
    | ResponderAccepted
    | IncidentCovered
    | IncidentCancelled
)


def reachable(person: Person) -> bool:
    """A number we can call or text (an unregistered caller may have sent none)."""
    return person.phone.startswith("+") and person.phone[1:].isdigit()


def alert_for(
    opened: IncidentOpened, trigger: Trigger, state: IncidentState | None = None, urgency: int = 1
) -> Alert | None:
    """The alert a trigger event carries: everyone on raise, the re-alerted on a repeated call, the
    escalation's alerted on an escalation; the caller when the first responder accepts and when the
    incident is covered; everyone alerted so far when it is cancelled."""
    caller, tier, why, accepted_by, covered = opened.caller, 0, "", None, False
    reason: AlertReason
    if isinstance(trigger, IncidentOpened):
        recipients, reason, urgency = trigger.recipients, "raised", 1
    elif isinstance(trigger, CallRepeated):
        recipients, reason, caller, urgency = trigger.realerted, "repeat", trigger.caller, trigger.urgency
    elif isinstance(trigger, IncidentEscalated):
        recipients, reason, tier, why = trigger.alerted, "escalation", trigger.tier, trigger.reason
    elif isinstance(trigger, NeighboursAlerted):
        recipients, reason, why = trigger.alerted, "neighbours", trigger.reason
    elif isinstance(trigger, ResponderAccepted):
        if not trigger.first:
            return None
        recipients, reason = (opened.caller,), "caller_update"
        accepted_by = Person(phone=trigger.phone, name=trigger.name, role=trigger.role)
    elif isinstance(trigger, IncidentCovered):
        recipients, reason, covered = (opened.caller,), "caller_update", True
    else:
        alerted = [r.person for r in state.responders.values() if r.notified] if state else []
        recipients = tuple({p.phone: p for p in [*opened.recipients, *alerted] if p.phone != trigger.by}.values())
        reason = "cancelled"
    if opened.silent:
        # a duress alarm: nothing ever goes to the caller's number
        recipients = tuple(p for p in recipients if p.phone != opened.caller.phone and p.role != "household")
    recipients = tuple(p for p in recipients if reachable(p) or p.role == "command_centre")
    if not recipients:
        return None
    return Alert(
        incident_id=opened.incident_id,
        reason=reason,
        recipients=recipients,
        village=opened.village,
        group=opened.group,
        caller=caller,
        registered=isinstance(opened, AlarmRaised),
        urgency=urgency,
        raised_at=opened.at,
        tier=tier,
        why=why,
        accepted_by=accepted_by,
        covered=covered,
        silent=opened.silent,
        origin=opened.origin,
        opened_by_name=opened.opened_by_name,
    )


# --- State -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Responder:
    """One person an incident reaches, with what they were sent and answered."""

    person: Person
    recipient: bool
    notified: dict[str, datetime] = field(default_factory=dict)
    last_alerted_at: datetime | None = None
    delivered: dict[str, datetime] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    accepted_at: datetime | None = None
    declined_at: datetime | None = None
    arrived_at: datetime | None = None
    accepts: dict[str, bool] = field(default_factory=dict)
    accepted_actor: Actor | None = None
    accepted_proxy: bool = False
    neighbour_group: str = ""

    @property
    def own_accept(self) -> bool:
        """Whether one of their accepts was their own (not a proxy answer)."""
        return any(not proxy for proxy in self.accepts.values())

    @property
    def answered(self) -> bool:
        """Whether they accepted or declined."""
        return self.accepted_at is not None or self.declined_at is not None


@dataclass(slots=True)
class IncidentState:
    """An incident folded from its log: opened, responders, cover, escalation, close."""

    id: str
    opened: IncidentOpened
    status: Status
    raised_at: datetime
    responders: dict[str, Responder]
    urgency: int = 1
    calls: frozenset[str] = frozenset()
    rounds: frozenset[int] = frozenset()
    outcomes: frozenset[tuple[int, str, str]] = frozenset()
    covered_at: datetime | None = None
    first_notified_at: datetime | None = None
    first_accept_at: datetime | None = None
    first_arrival_at: datetime | None = None
    closed_at: datetime | None = None
    escalation_tier: int = 0
    neighbours_alerted_at: datetime | None = None
    category: Category | None = None
    cancel_reason: CancelReason | None = None
    closed_by: str | None = None
    note: str = ""

    @property
    def closed(self) -> bool:
        """Resolved or cancelled."""
        return self.status in CLOSED

    @property
    def covered(self) -> bool:
        """The cover quorum was met."""
        return self.covered_at is not None

    @property
    def caller(self) -> Person:
        """Who raised it."""
        return self.opened.caller

    @property
    def registered(self) -> bool:
        """Raised by a member of a group (not an unknown number)."""
        return isinstance(self.opened, AlarmRaised)

    @property
    def drill(self) -> bool:
        """A drill, not a real alarm."""
        return is_drill(self.opened)

    def accepted_roles(self) -> set[Role]:
        """The roles of everyone who accepted."""
        return {r.person.role for r in self.responders.values() if r.accepted_at is not None}

    def cover_role(self, responder: Responder) -> Role:
        """The role an accept counts as toward cover: a neighbour's as the leader half where the
        village allows it (`neighbour_covers`), else as nobody's (`unregistered` is in no quorum)."""
        if not responder.neighbour_group:
            return responder.person.role
        return "leader" if self.opened.neighbour_covers else "unregistered"

    def answers(self) -> list[Answered]:
        """Every accept recorded, one per responder and actor."""
        return [
            Answered(phone=phone, role=self.cover_role(r), actor=key, proxy=proxy)
            for phone, r in self.responders.items()
            for key, proxy in r.accepts.items()
        ]


def _start(event: IncidentOpened) -> IncidentState:
    responders = {p.phone: Responder(person=p, recipient=True, last_alerted_at=event.at) for p in event.recipients}
    for desk in event.duty_desks:
        responders.setdefault(desk.phone, Responder(person=desk, recipient=False))
    for away in event.absent:
        responders.setdefault(away.phone, Responder(person=away, recipient=False))
    for person, group in neighbour_pairs(event):
        responders.setdefault(person.phone, Responder(person=person, recipient=False, neighbour_group=group))
    return IncidentState(
        id=event.incident_id,
        opened=event,
        status="raised",
        raised_at=event.at,
        responders=responders,
        calls=frozenset({event.call_id}),
    )


def _updated(
    responders: dict[str, Responder], phones: Iterable[str], change: Callable[[Responder], Responder | None]
) -> dict[str, Responder]:
    """`responders` with `change` applied to each of `phones` it holds, in order, each change seeing
    the ones before (None: that one unchanged). The map is copied once, and only if one changed:
    an event reaching nine people costs one copy, not nine copies of the map and of the state."""
    out = responders
    for phone in phones:
        current = out.get(phone)
        if current is None:
            continue
        new = change(current)
        if new is None:
            continue
        if out is responders:
            out = dict(responders)
        out[phone] = new
    return out


def _alerted_at(at: datetime) -> Callable[[Responder], Responder]:
    return lambda r: replace(r, last_alerted_at=at)


def _failed_on(channel: str, failure: Unreached) -> Callable[[Responder], Responder]:
    key = f"{channel}/{failure.address}" if failure.address else channel
    return lambda r: replace(r, failed={**r.failed, key: failure.kind})


def _notified(state: IncidentState, channel: str, round_: int, phones: Iterable[str], at: datetime) -> IncidentState:
    """These recipients' alert of `round_` was handed to `channel` at `at` (a notice, or a first
    attempt's outcome that carries `handed_at`)."""
    responders = _updated(
        state.responders,
        phones,
        lambda r: None if channel in r.notified else replace(r, notified={**r.notified, channel: at}),
    )
    status: Status = "notifying" if state.status == "raised" else state.status
    return replace(
        state,
        responders=responders,
        status=status,
        rounds=state.rounds | {round_},
        first_notified_at=state.first_notified_at or at,
    )


def evolve(state: IncidentState | None, event: Event) -> IncidentState | None:
    """Fold one event into the incident state; unknown or stray events leave it unchanged."""
    if isinstance(event, IncidentOpened):
        return _start(event) if state is None else state
    if state is None or not isinstance(event, IncidentEvent):
        return state
    if isinstance(event, CallRepeated):
        return replace(
            state,
            responders=_updated(state.responders, (p.phone for p in event.realerted), _alerted_at(event.at)),
            urgency=max(state.urgency, event.urgency),
            calls=state.calls | {event.call_id},
        )
    if isinstance(event, RespondersNotified):
        return _notified(state, event.channel, event.round, event.phones, event.at)
    if isinstance(event, DeliverySucceeded):
        if event.handed_at is not None:
            state = _notified(state, event.channel, event.round, [t.phone for t in event.targets], event.handed_at)
        channel, at = event.channel, event.at
        responders = _updated(
            state.responders,
            (t.phone for t in event.targets),
            lambda r: None if channel in r.delivered else replace(r, delivered={**r.delivered, channel: at}),
        )
        done = {(event.round, event.channel, t.address) for t in event.targets}
        return replace(state, responders=responders, outcomes=state.outcomes | done)
    if isinstance(event, DeliveryFailed):
        if event.handed_at is not None:
            state = _notified(state, event.channel, event.round, [f.phone for f in event.failures], event.handed_at)
        responders = state.responders
        for failure in event.failures:
            if failure.kind != "withdrawn":
                responders = _updated(responders, (failure.phone,), _failed_on(event.channel, failure))
        done = {(event.round, event.channel, f.address) for f in event.failures}
        return replace(state, responders=responders, outcomes=state.outcomes | done)
    if isinstance(event, ResponderAccepted):
        r = state.responders.get(event.phone)
        if r is None:
            return state
        key = actor_key(event.actor, event.phone)
        first = r.accepted_at is None
        accepted = replace(
            r,
            accepted_at=r.accepted_at or event.at,
            declined_at=None,
            accepts={**r.accepts, key: event.proxy},
            accepted_actor=event.actor if first else r.accepted_actor,
            accepted_proxy=event.proxy if first else r.accepted_proxy,
        )
        status = "acknowledged" if state.status in ("raised", "notifying") else state.status
        return replace(
            state,
            responders={**state.responders, event.phone: accepted},
            status=status,
            first_accept_at=state.first_accept_at or event.at,
        )
    if isinstance(event, ResponderDeclined):
        at = event.at
        return replace(
            state, responders=_updated(state.responders, (event.phone,), lambda r: replace(r, declined_at=at))
        )
    if isinstance(event, ResponderArrived):
        r = state.responders.get(event.phone)
        if r is None:
            return state
        arrived = replace(r, arrived_at=r.arrived_at or event.at)
        status = state.status if state.closed else "on_scene"
        return replace(
            state,
            responders={**state.responders, event.phone: arrived},
            status=status,
            first_arrival_at=state.first_arrival_at or event.at,
        )
    if isinstance(event, IncidentCovered):
        return replace(state, covered_at=state.covered_at or event.at)
    if isinstance(event, IncidentEscalated):
        return replace(
            state,
            responders=_updated(state.responders, (p.phone for p in event.alerted), _alerted_at(event.at)),
            escalation_tier=max(state.escalation_tier, event.tier),
        )
    if isinstance(event, NeighboursAlerted):
        return replace(
            state,
            responders=_updated(state.responders, (p.phone for p in event.alerted), _alerted_at(event.at)),
            neighbours_alerted_at=state.neighbours_alerted_at or event.at,
        )
    if isinstance(event, IncidentResolved):
        return replace(
            state, status="resolved", closed_at=event.at, category=event.category, closed_by=event.by, note=event.note
        )
    if isinstance(event, IncidentCancelled):
        return replace(
            state,
            status="cancelled",
            closed_at=event.at,
            cancel_reason=event.reason,
            closed_by=event.by,
            note=event.note,
        )
    return state


def fold(events: list[Event]) -> IncidentState | None:
    """The incident folded from its events, or None when none opens it."""
    state: IncidentState | None = None
    for event in events:
        state = evolve(state, event)
    return state


# --- Answers ---------------------------------------------------------------------------------------


class Respond(msgspec.Struct, frozen=True, kw_only=True):
    """An answer by `responder` (accept, decline, arrived, resolve, cancel); `at` is the decision's time."""

    incident_id: str
    responder: str
    action: Action
    at: datetime | None = None
    category: str | None = None
    note: str = ""
    reason: str | None = None
    actor: Actor | None = None


CANCEL_REASONS: tuple[CancelReason, ...] = ("caller_safe", "misdial", "duplicate", "drill", "other")
CLOSERS: tuple[Role, ...] = ("leader", "assistant", "officer", "duty")


def decide_response(state: IncidentState | None, cmd: Respond) -> list[Event]:
    """Decide one answer. Raises NotFound, NotPermitted (403), InvalidTransition (409), InvalidCommand (422)."""
    if state is None:
        raise NotFound(f"no incident {cmd.incident_id}")
    is_caller = cmd.responder == state.caller.phone
    responder = state.responders.get(cmd.responder)
    if responder is None and not is_caller:
        raise NotPermitted("only members of the incident's group and its duty desk may answer")
    if state.closed:
        raise InvalidTransition(f"incident is already {state.status}")
    if cmd.at is None:
        raise InvalidCommand("an answer needs its time")
    at, iid, actor = cmd.at, state.id, cmd.actor
    proxy = is_proxy(actor, cmd.responder)
    if cmd.action == "cancel":
        if not is_caller and (responder is None or responder.person.role not in CLOSERS):
            raise NotPermitted("only the caller, the group leader, assistant, officer or duty desk may cancel")
        reason = cmd.reason or ("caller_safe" if is_caller else "other")
        if reason not in CANCEL_REASONS:
            raise InvalidCommand(f"cancel reason must be one of {', '.join(CANCEL_REASONS)}")
        return [
            IncidentCancelled(
                at=at, incident_id=iid, by=cmd.responder, reason=reason, note=cmd.note, actor=actor, proxy=proxy
            ),
            line_closed(state, at),
        ]
    if is_caller or responder is None:
        raise InvalidTransition(f"the caller cannot {cmd.action} their own alarm; the caller may only cancel")
    person = responder.person
    if cmd.action == "accept":
        if responder.accepted_at is not None and (proxy or responder.own_accept):
            return []
        return _accept(state, person, at, actor)
    if cmd.action == "decline":
        if responder.accepted_at is not None:
            raise InvalidTransition("already accepted; an accepted alarm cannot be declined")
        if responder.declined_at is not None:
            return []
        return [
            ResponderDeclined(
                at=at, incident_id=iid, phone=person.phone, role=person.role, note=cmd.note, actor=actor, proxy=proxy
            )
        ]
    if cmd.action == "arrived":
        if responder.arrived_at is not None:
            return []
        accepted = [] if responder.accepted_at is not None else _accept(state, person, at, actor)
        arrived = ResponderArrived(
            at=at, incident_id=iid, phone=person.phone, role=person.role, actor=actor, proxy=proxy
        )
        return [*accepted, arrived]
    if cmd.action == "resolve":
        if person.role not in CLOSERS:
            raise NotPermitted("only the group leader, assistant, officer or duty desk may resolve")
        if cmd.category not in CATEGORIES:
            raise InvalidCommand(f"resolve needs a category: one of {', '.join(CATEGORIES)}")
        return [
            IncidentResolved(
                at=at,
                incident_id=iid,
                by=person.phone,
                category=cmd.category,
                note=cmd.note,
                actor=actor,
                proxy=proxy,
            ),
            line_closed(state, at),
        ]
    raise InvalidCommand(f"action must be one of {', '.join(ACTIONS)}")


def line_closed(state: IncidentState, at: datetime) -> LineClosed:
    """The event that closes the incident's line, so its next call opens the next epoch."""
    return LineClosed(at=at, line=state.opened.line, incident_id=state.id, epoch=state.opened.epoch)


def _accept(state: IncidentState, person: Person, at: datetime, actor: Actor | None) -> list[Event]:
    proxy = is_proxy(actor, person.phone)
    responder = state.responders[person.phone]
    events: list[Event] = [
        ResponderAccepted(
            at=at,
            incident_id=state.id,
            phone=person.phone,
            role=person.role,
            name=person.name,
            first=state.first_accept_at is None,
            actor=actor,
            proxy=proxy,
            neighbour_group=responder.neighbour_group,
        )
    ]
    if state.covered:
        return events
    role = state.cover_role(responder)
    this = Answered(phone=person.phone, role=role, actor=actor_key(actor, person.phone), proxy=proxy)
    opened = state.opened
    met = cover_by(opened.quorum, [*state.answers(), this], proxy_counts=opened.proxy_counts)
    if met is not None:
        accepted = {p for p, r in state.responders.items() if r.accepted_at is not None}
        accepted_by = tuple(sorted(accepted | {person.phone}))
        relaxed = opened.relaxed or ()
        events.append(
            IncidentCovered(
                at=at,
                incident_id=state.id,
                accepted_by=accepted_by,
                kind="relaxed" if relaxed else "full",
                relaxed=relaxed,
                by_proxy=any(a.proxy for a in met),
            )
        )
    return events


# --- Escalation ------------------------------------------------------------------------------------

Timer = Literal["ack", "escalate", "arrival", "station"]
TIMERS: tuple[Timer, ...] = ("ack", "escalate", "arrival", "station")
TIER_REASONS: dict[Timer, EscalationReason] = {
    "ack": "ack_deadline",
    "escalate": "escalate_deadline",
    "arrival": "arrival_deadline",
    "station": "station_deadline",
}


def timer_due(state: IncidentState, timer: Timer) -> datetime | None:
    """When a deadline falls due; the arrival deadline only once the incident is covered."""
    opened = state.opened
    if timer == "ack":
        return state.raised_at + timedelta(seconds=opened.ack_deadline_s)
    if timer == "escalate":
        return state.raised_at + timedelta(seconds=opened.escalate_after_s)
    if timer == "station":
        # neighbours first: the station a second ack deadline later, never after the escalate one
        return state.raised_at + timedelta(seconds=min(2 * opened.ack_deadline_s, opened.escalate_after_s))
    if state.covered_at is None:
        return None
    return state.covered_at + timedelta(seconds=opened.arrival_deadline_s)


def deadline_after(state: IncidentState, fired: Timer) -> tuple[Timer, datetime] | None:
    """The deadline a fired one sets: the escalate deadline once the ack deadline passed uncovered.

    An alarm covered before its ack deadline never needs the escalate one (cover is never
    withdrawn), so raising sets only the ack deadline and the escalate one follows from it; a drill,
    which stops at the station, never needs it."""
    if fired != "ack" or state.closed or state.covered or state.escalation_tier >= 2 or top_tier(state) < 2:
        return None
    due = timer_due(state, "escalate")
    return None if due is None else ("escalate", due)


def deadlines_after(state: IncidentState, fired: Timer) -> list[tuple[Timer, datetime]]:
    """Every deadline a fired one sets: the escalate one (`deadline_after`), and, where the village
    alerts its neighbouring groups before the station, the station's once the ack deadline passed
    uncovered."""
    following = deadline_after(state, fired)
    out = [following] if following is not None else []
    if (
        fired == "ack"
        and state.opened.neighbours_order == "before"
        and state.opened.neighbours
        and not state.closed
        and not state.covered
        and state.escalation_tier < 1
    ):
        due = timer_due(state, "station")
        assert due is not None
        out.insert(0, ("station", due))
    return out


def neighbours_due(state: IncidentState, timer: Timer, at: datetime) -> list[NeighboursAlerted]:
    """The neighbouring groups' alert a deadline passing uncovered makes (once; none with none, or
    where the village turned them off)."""
    if timer not in ("ack", "escalate", "station") or (timer == "escalate" and state.escalation_tier >= 2):
        return []
    return _alert_neighbours(state, at, "escalate_deadline" if timer == "escalate" else "ack_deadline")


def _alert_neighbours(state: IncidentState, at: datetime, reason: NeighboursReason) -> list[NeighboursAlerted]:
    opened = state.opened
    if state.closed or state.covered or state.neighbours_alerted_at is not None or opened.neighbours_order == "off":
        return []
    people = [(p, g) for p, g in neighbour_pairs(opened) if state.responders.get(p.phone) is not None]
    if not people:
        return []
    return [
        NeighboursAlerted(
            at=at,
            incident_id=state.id,
            reason=reason,
            alerted=tuple(p for p, _ in people),
            groups=tuple(dict.fromkeys(g for _, g in people)),
        )
    ]


def top_tier(state: IncidentState) -> int:
    """The highest tier an incident escalates to: the county (2), a drill's the station (1)."""
    return DRILL_TOP_TIER if state.drill else 2


def _tier_one(state: IncidentState, at: datetime, reason: EscalationReason) -> IncidentEscalated:
    """Officer and assistant alerted again (unless they accepted), the duty desks notified."""
    staff = [
        r.person
        for r in state.responders.values()
        if r.recipient and r.person.role in ("officer", "assistant") and r.accepted_at is None
    ]
    return IncidentEscalated(
        at=at, incident_id=state.id, tier=1, reason=reason, alerted=_ordered([*staff, *state.opened.duty_desks])
    )


def _tier_two(
    state: IncidentState, at: datetime, reason: EscalationReason, command_centre: Person | None
) -> IncidentEscalated:
    return IncidentEscalated(
        at=at, incident_id=state.id, tier=2, reason=reason, alerted=(command_centre,) if command_centre else ()
    )


def decide_timer(
    state: IncidentState, timer: Timer, at: datetime, command_centre: Person | None
) -> list[IncidentEscalated | NeighboursAlerted]:
    """A deadline fired: escalate once per tier if the incident is still not where it should be.

    ack: not covered -> tier 1. escalate: not covered -> tier 2 (and tier 1 first if it never
    happened). arrival: covered but nobody on scene -> the next tier not yet reached.
    A closed incident, or a tier already reached, decides nothing; a drill never goes past the
    station (`top_tier`). Where the group has neighbouring groups (and the village did not turn them
    off) the first deadline passing uncovered alerts their leaders and assistants once: alongside
    tier 1, or `before` it (tier 1 then waits for the station deadline)."""
    if state.closed:
        return []
    due = timer_due(state, timer)
    if due is None or at < due:
        return []
    escalated = [e for e in _decide_timer(state, timer, at, command_centre) if e.tier <= top_tier(state)]
    if timer == "ack" and state.opened.neighbours_order == "before" and state.opened.neighbours:
        escalated = []
    return [*neighbours_due(state, timer, at), *escalated]


def _decide_timer(
    state: IncidentState, timer: Timer, at: datetime, command_centre: Person | None
) -> list[IncidentEscalated]:
    due = timer_due(state, timer)
    if due is None or at < due:
        return []
    reason = TIER_REASONS[timer]
    if timer in ("ack", "station"):
        return [] if state.covered or state.escalation_tier >= 1 else [_tier_one(state, at, reason)]
    if timer == "escalate":
        if state.covered or state.escalation_tier >= 2:
            return []
        first = [_tier_one(state, at, reason)] if state.escalation_tier < 1 else []
        return [*first, _tier_two(state, at, reason, command_centre)]
    if state.first_arrival_at is not None or state.escalation_tier >= 2:
        return []
    if state.escalation_tier < 1:
        return [_tier_one(state, at, reason)]
    return [_tier_two(state, at, reason, command_centre)]


def unreachable(responder: Responder) -> bool:
    """Every channel it was notified on has failed permanently, and nothing was delivered."""
    if responder.delivered or not responder.failed or not responder.notified:
        return False
    if any(kind != "permanent" for kind in responder.failed.values()):
        return False
    failed_channels = {key.split("/", 1)[0] for key in responder.failed}
    return set(responder.notified) <= failed_channels


def decide_unreachable(state: IncidentState, at: datetime) -> list[IncidentEscalated | NeighboursAlerted]:
    """No officer can be reached: escalate at once rather than waiting for the deadline; the group's
    reachable members can no longer meet the quorum: alert the neighbouring groups at once."""
    if state.closed or state.covered:
        return []
    neighbours = _alert_neighbours(state, at, "quorum_unreachable") if quorum_out_of_reach(state) else []
    if state.escalation_tier >= 1:
        return list(neighbours)
    officers = [r for r in state.responders.values() if r.recipient and r.person.role == "officer"]
    if not officers or not all(unreachable(r) for r in officers):
        return list(neighbours)
    return [*neighbours, _tier_one(state, at, "officer_unreachable")]


def neighbours_at_raise(opened: IncidentOpened) -> list[NeighboursAlerted]:
    """The neighbouring groups' alert an incident is raised with: when the group's own people on
    duty (members away at raise are not rung) cannot meet its quorum from the start, its
    neighbours are rung with the alarm (`quorum_unreachable`), not a deadline later."""
    state = _start(opened)
    return _alert_neighbours(state, opened.at, "quorum_unreachable") if quorum_out_of_reach(state) else []


def quorum_out_of_reach(state: IncidentState) -> bool:
    """Whether the group's own people (recipients not unreachable, accepters, duty desks) can no
    longer meet every clause of the incident's quorum."""
    roles = {
        r.person.role
        for r in state.responders.values()
        if not r.neighbour_group
        and (r.accepted_at is not None or (r.recipient and not unreachable(r)) or r.person.role == "duty")
    }
    return bool(state.opened.quorum) and not quorum_met(state.opened.quorum, roles)


# --- One decision shape -----------------------------------------------------------------------------


class FireTimer(msgspec.Struct, frozen=True, kw_only=True):
    """A deadline of the incident fell due; tier 2 alerts `command_centre` (whoever it is now)."""

    incident_id: str
    timer: Timer
    command_centre: Person | None = None


class CheckUnreachable(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery failed permanently: is any officer still reachable?"""

    incident_id: str


IncidentCommand = Respond | FireTimer | CheckUnreachable


def decide(state: IncidentState | None, command: IncidentCommand, now: datetime) -> list[Event]:
    """The incident's decider: the events `command` makes of `state` at `now` (none: nothing to do)."""
    if isinstance(command, Respond):
        return decide_response(state, command if command.at is not None else replace_at(command, now))
    if state is None:
        raise NotFound(f"no incident {command.incident_id}")
    if isinstance(command, FireTimer):
        return list(decide_timer(state, command.timer, now, command.command_centre))
    return list(decide_unreachable(state, now))


def replace_at(command: Respond, at: datetime) -> Respond:
    """The answer stamped with the decision's time."""
    return msgspec.structs.replace(command, at=at)


@dataclass(frozen=True, slots=True)
class Line:
    """What a call decides on: its route, the line's current epoch, that epoch's incident (if any),
    and the answer the call id was already given (if any)."""

    route: Route
    epoch: int
    incident: IncidentState | None
    answered: CallRouted | None = None


def decide_call(line: Line, call: IncomingCall, now: datetime) -> list[Event]:
    """A call on its line: open the epoch's incident, or merge into it (the call indexed either way);
    a call already indexed decides nothing, one the incident holds but the index lacks (a crash
    between the two appends) is indexed; a closed incident whose line was not advanced gets its
    LineClosed first (the call is then decided again on the next epoch)."""
    if line.answered is not None:
        return []
    state = line.incident
    if state is None:
        opened = open_incident(line.route, call, line.epoch)
        status: CallStatus = "unregistered" if line.route.kind == "unregistered" else "raised"
        routed = CallRouted(at=call.at, call_id=call.call_id, incident_id=opened.incident_id, status=status)
        return [opened, *neighbours_at_raise(opened), routed]
    if state.closed:
        return [line_closed(state, state.closed_at or state.raised_at)]
    if call.call_id in state.calls:
        status = call_status(line, call.call_id)
        return [CallRouted(at=call.at, call_id=call.call_id, incident_id=state.id, status=status)]
    repeated = repeat_call(state, call, line.route.caller)
    return [repeated, CallRouted(at=call.at, call_id=call.call_id, incident_id=state.id, status="merged")]


def call_status(line: Line, call_id: str) -> CallStatus:
    """The answer to a call its line already holds (a retried call id)."""
    if line.answered is not None:
        return line.answered.status
    state = line.incident
    assert state is not None
    if call_id != state.opened.call_id:
        return "merged"
    return "raised" if state.registered else "unregistered"
