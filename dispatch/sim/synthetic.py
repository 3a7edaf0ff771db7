"""A realistic synthetic log for benchmarks, tests and demos: rosters, alarms, notices and answers.

Invariants:
- deterministic for a given seed: the same arguments give the same events in the same order;
- every incident's events are produced by the domain's own deciders (route, open, answer,
  timers, evolve), so a projection of this log sees exactly what the service would have written;
- events come in time order across incidents (a county log interleaves villages), each on the
  subject the service uses, with a deterministic message id;
- a few households and leaders never answer and a few numbers always fail permanently (the last
  village's officer among them), so readiness reports have something to find; some groups never
  call, so "no alarm in 90 days" does too.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dispatch.domain.directory import Directory
from dispatch.domain.incident import (
    DEFAULT_QUORUM,
    IncidentState,
    IncomingCall,
    Respond,
    decide_response,
    decide_timer,
    evolve,
    open_incident,
    parse_quorum,
    route_call,
)
from dispatch.domain.roster import parse_roster, plan_import
from dispatch.events.model import (
    CallRouted,
    Category,
    DeliveryFailed,
    DeliverySucceeded,
    Event,
    IncidentCovered,
    IncidentEvent,
    LineEvent,
    Person,
    Reached,
    ResponderAccepted,
    RespondersNotified,
    Unreached,
)
from dispatch.events.subjects import call_subject, incident_subject, line_subject, notice_subject

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = "建国秀英桂兰德明翠花永福淑芬志强丽春生大山红梅海燕国华玉珍文军明辉小平金凤长江爱民"
CATEGORY_WEIGHTS: dict[Category, float] = {
    "dispute": 30,
    "help": 25,
    "public_order": 15,
    "traffic": 10,
    "criminal": 8,
    "fire": 2,
    "other": 10,
}
NOTICE_CHANNELS = ("voice", "sms")


@dataclass(frozen=True, slots=True)
class Stored:
    """One event as the service would append it."""

    subject: str
    event: Event
    msg_id: str


@dataclass
class History:
    """The roster (as events), then the incidents, in time order."""

    roster: list[Stored]
    incidents: Iterator[Stored]
    villages: list[str]
    silent: set[str] = field(default_factory=set)
    unreachable: set[str] = field(default_factory=set)


def village_codes(count: int) -> list[str]:
    return [f"v{i:03d}" for i in range(1, count + 1)]


def roster_csv(villages: int, groups_per_village: int, rng: random.Random) -> str:
    """Ten numbers a group: seven households, a leader, an assistant and the village's officer."""
    lines = ["village,group,phone,role,name"]
    serial = 0

    def name() -> str:
        return rng.choice(SURNAMES) + "".join(rng.sample(GIVEN, 2))

    for v, village in enumerate(village_codes(villages)):
        officer = f"139{v:04d}0000"
        officer_name = name() + "警官"
        for g in range(1, groups_per_village + 1):
            for _ in range(7):
                serial += 1
                lines.append(f"{village},{g},138{serial:08d},household,{name()}")
            serial += 1
            lines.append(f"{village},{g},138{serial:08d},leader,{name()}")
            lines.append(f"{village},{g},137{v:04d}{g:04d},assistant,{name()}")
            lines.append(f"{village},{g},{officer},officer,{officer_name}")
        lines.append(f"{village},,0731{v:04d}0110,duty,{village}派出所值班室")
    return "\n".join(lines) + "\n"


def synthetic_history(
    *,
    events: int,
    villages: int = 20,
    groups_per_village: int = 10,
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC),
    days: float = 730.0,
    seed: int = 5,
) -> History:
    """About `events` incident-side events (plus the roster) spread over `days` from `start`."""
    rng = random.Random(seed)
    directory = Directory()
    plan = plan_import(directory, parse_roster(roster_csv(villages, groups_per_village, rng)), start)
    roster: list[Stored] = []
    for change in plan.changes:
        for i, event in enumerate(change.events):
            roster.append(Stored(change.subject, event, f"roster:{change.subject}:{i}"))
            directory.apply(event, len(roster))
    groups = sorted(directory.live_groups(), key=lambda g: (g.village, g.group))
    members = [p.phone for g in groups for p in g.members.values() if p.role in ("household", "leader")]
    silent = set(rng.sample(members, max(1, len(members) // 50)))
    unreachable = set(rng.sample(sorted(set(members) - silent), max(1, len(members) // 100)))
    unreachable |= {p.phone for p in groups[-1].members.values() if p.role == "officer"}
    quiet = {g.id for g in rng.sample(groups, max(1, len(groups) // 20))}
    callers = [(g, p) for g in groups if g.id not in quiet for p in g.members.values() if p.role == "household"]
    per_incident = 20
    incidents = max(1, events // per_incident)
    gap = days * 86400 / incidents
    return History(
        roster=roster,
        incidents=_incidents(directory, callers, incidents, start, gap, rng, silent, unreachable, events),
        villages=village_codes(villages),
        silent=silent,
        unreachable=unreachable,
    )


def _incidents(
    directory: Directory,
    callers: Sequence[tuple[object, Person]],
    count: int,
    start: datetime,
    gap: float,
    rng: random.Random,
    silent: set[str],
    unreachable: set[str],
    limit: int,
) -> Iterator[Stored]:
    pending: list[tuple[datetime, int, Stored]] = []
    order = 0
    produced = 0
    epochs: dict[str, int] = {}
    t = start
    n = 0
    while produced < limit:
        n += 1
        t += timedelta(seconds=rng.expovariate(1 / gap))
        while pending and pending[0][0] <= t:
            yield heapq.heappop(pending)[2]
            produced += 1
        _, caller = rng.choice(callers)
        for when, stored in _one_incident(directory, caller.phone, t, n, rng, silent, unreachable, epochs):
            order += 1
            heapq.heappush(pending, (when, order, stored))
    while pending and produced < limit:
        yield heapq.heappop(pending)[2]
        produced += 1


def _subject(event: Event) -> str:
    if isinstance(event, LineEvent):
        return line_subject(event.line)
    if isinstance(event, CallRouted):
        return call_subject(event.call_id)
    assert isinstance(event, IncidentEvent)
    if isinstance(event, (RespondersNotified, DeliverySucceeded, DeliveryFailed)):
        return notice_subject(event.incident_id)
    return incident_subject(event.incident_id)


def _caller_update(event: IncidentEvent, caller: str, round_no: int, rng: random.Random) -> list[IncidentEvent]:
    """The caller is texted when help accepts and when the incident is covered."""
    sent = event.at + timedelta(seconds=0.05)
    return [
        RespondersNotified(at=sent, incident_id=event.incident_id, channel="sms", round=round_no, phones=(caller,)),
        DeliverySucceeded(
            at=sent + timedelta(seconds=rng.uniform(0.3, 2.0)),
            incident_id=event.incident_id,
            channel="sms",
            round=round_no,
            targets=(Reached(phone=caller, address=caller),),
        ),
    ]


def _one_incident(
    directory: Directory,
    caller: str,
    t0: datetime,
    n: int,
    rng: random.Random,
    silent: set[str],
    unreachable: set[str],
    epochs: dict[str, int],
) -> list[tuple[datetime, Stored]]:
    out: list[tuple[datetime, Stored]] = []
    state: IncidentState | None = None

    def record(event: Event) -> None:
        nonlocal state
        state = evolve(state, event)
        out.append((event.at, Stored(_subject(event), event, f"syn:{n}:{len(out)}")))

    def at(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    call_id = f"syn-{n}"
    unknown = rng.random() < 0.03
    number = f"+86150{n:08d}" if unknown else caller
    call = IncomingCall(
        call_id=call_id, caller_raw=number, caller=number, callee="6995", channel="voice", called_at=t0, at=t0
    )
    duty = (Person(phone="+867310000110", name="县局值班室", role="duty"),)
    route = route_call(directory, call, parse_quorum(DEFAULT_QUORUM), duty)
    epoch = epochs.get(route.line, 0) + 1
    epochs[route.line] = epoch
    opened = open_incident(route, call, epoch)
    record(opened)
    record(CallRouted(at=at(0.01), call_id=call_id, incident_id=opened.incident_id, status="raised"))
    people = [p for p in opened.recipients]
    round_no = n * 10 + 1
    for channel in NOTICE_CHANNELS:
        phones = tuple(p.phone for p in people)
        record(
            RespondersNotified(
                at=at(0.05), incident_id=opened.incident_id, channel=channel, round=round_no, phones=phones
            )
        )
        ok = tuple(Reached(phone=p, address=p) for p in phones if p not in unreachable)
        bad = tuple(
            Unreached(phone=p, address=p, kind="permanent", reason="invalid number") for p in phones if p in unreachable
        )
        if ok:
            record(
                DeliverySucceeded(
                    at=at(rng.uniform(0.3, 3.0)),
                    incident_id=opened.incident_id,
                    channel=channel,
                    round=round_no,
                    targets=ok,
                )
            )
        if bad:
            record(
                DeliveryFailed(
                    at=at(rng.uniform(0.3, 3.0)),
                    incident_id=opened.incident_id,
                    channel=channel,
                    round=round_no,
                    failures=bad,
                )
            )
    assert state is not None
    answers: list[tuple[float, str, str]] = []
    if rng.random() < 0.02:
        answers.append((rng.uniform(20, 90), opened.caller.phone, "cancel-drill"))
    elif rng.random() < 0.07:
        answers.append((rng.uniform(20, 200), opened.caller.phone, "cancel"))
    else:
        by_role = {p.role: p.phone for p in people if p.phone not in silent and p.phone not in unreachable}
        officer = by_role.get("officer") or by_role.get("duty")
        helper = by_role.get("leader") or by_role.get("assistant")
        officer_at = rng.lognormvariate(3.6, 0.6)
        if officer is None and opened.duty_desks:
            officer, officer_at = opened.duty_desks[0].phone, opened.ack_deadline_s + rng.uniform(10, 120)
        if officer:
            answers.append((officer_at, officer, "accept"))
        if helper:
            answers.append((rng.lognormvariate(3.3, 0.5), helper, "accept"))
        assistant = by_role.get("assistant")
        if assistant and assistant != helper and rng.random() < 0.7:
            answers.append((rng.lognormvariate(3.5, 0.5), assistant, "accept" if rng.random() < 0.6 else "decline"))
        for p in people:
            if p.role == "household" and p.phone not in silent and rng.random() < 0.6:
                answers.append((rng.uniform(15, 240), p.phone, "decline" if rng.random() < 0.5 else "accept"))
        if officer:
            arrive = officer_at + rng.lognormvariate(6.4, 0.5)
            answers.append((arrive, officer, "arrived"))
            answers.append((arrive + rng.uniform(300, 3600), officer, "resolve"))
    plan: list[tuple[float, int, str, str]] = [(s, i, who, action) for i, (s, who, action) in enumerate(answers)]
    plan += [(opened.ack_deadline_s, -1, "", "ack"), (opened.escalate_after_s, -2, "", "escalate")]
    heapq.heapify(plan)
    caller_round = round_no
    while plan:
        seconds, _, who, action = heapq.heappop(plan)
        assert state is not None
        if state.closed:
            break
        if not who:
            for event in decide_timer(state, action, at(seconds), None):  # type: ignore[arg-type]
                record(event)
            continue
        cmd_action, reason = action, None
        if action == "cancel-drill":
            cmd_action, reason = "cancel", "drill"
        elif action == "cancel":
            reason = rng.choice(["misdial", "caller_safe", "duplicate"])
        category = rng.choices(list(CATEGORY_WEIGHTS), weights=list(CATEGORY_WEIGHTS.values()))[0]
        command = Respond(
            incident_id=opened.incident_id,
            responder=who,
            action=cmd_action,  # type: ignore[arg-type]
            at=at(seconds),
            category=category,
            reason=reason,
        )
        was_covered = state.covered
        for answer in decide_response(state, command):
            record(answer)
            if isinstance(answer, IncidentCovered) or (isinstance(answer, ResponderAccepted) and answer.first):
                caller_round += 1
                for notice in _caller_update(answer, opened.caller.phone, caller_round, rng):
                    record(notice)
        if not was_covered and state.covered:
            heapq.heappush(plan, (seconds + opened.arrival_deadline_s, -3, "", "arrival"))
    return out
