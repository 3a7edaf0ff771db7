"""What the API and the console show of an incident and a group (plain JSON-able dicts).

Invariant: every field is derived from the folded state or the stored events; nothing here
decides anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import msgspec

from dispatch.domain.delivery import NO_CHANNEL
from dispatch.domain.directory import GroupState
from dispatch.domain.incident import IncidentState, Responder
from dispatch.domain.messages import (
    LEGACY_ACTOR_ZH,
    ROLE_ZH,
    STATUS_ZH,
    Reach,
    actor_text,
    describe,
    geo_uri,
    home,
    relaxed_of,
)
from dispatch.domain.timezones import DEFAULT_TIME_ZONE, human_time
from dispatch.events.model import (
    Actor,
    DeliveryFailed,
    DeliverySucceeded,
    IncidentCovered,
    IncidentEscalated,
    IncidentEvent,
    IncidentOpened,
    Person,
    RespondersNotified,
    UnregisteredCall,
)
from dispatch.store.eventstore import Recorded

_TIMELINE_SKIP = {"recipients", "duty_desks", "quorum", "incident_id", "at"}


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def person(p: Person) -> dict[str, Any]:
    """A person as the API shows them; `place` (address, lat, lon, geo link) when the roster gives one,
    `language` when it gives one other than Mandarin."""
    shown: dict[str, Any] = {"phone": p.phone, "name": p.name, "role": p.role, "role_zh": ROLE_ZH.get(p.role, p.role)}
    if p.stands_in_for:
        shown["stands_in_for"] = p.stands_in_for
    if p.place is not None:
        shown["place"] = {
            "address": p.place.address,
            "lat": p.place.lat,
            "lon": p.place.lon,
            "geo": geo_uri(p),
            "where": home(p),
        }
    if p.language:
        shown["language"] = p.language
    return shown


def actor_view(actor: Actor | None) -> dict[str, Any]:
    """Who recorded an act; an act stored before actors were kept is `legacy` (unknown)."""
    if actor is None:
        return {
            "channel": "unknown",
            "legacy": True,
            "token_id": None,
            "name": None,
            "phone": None,
            "text": LEGACY_ACTOR_ZH,
        }
    return {
        "channel": actor.channel,
        "legacy": False,
        "token_id": actor.token_id or None,
        "name": actor.name or None,
        "phone": actor.phone or None,
        "text": actor_text(actor),
    }


def responder_state(r: Responder) -> str:
    if r.arrived_at:
        return "arrived"
    if r.accepted_at:
        return "accepted"
    if r.declined_at:
        return "declined"
    if r.delivered:
        return "delivered"
    if r.failed and not r.delivered:
        return "failed"
    if r.notified:
        return "notified"
    return "pending"


def responder_view(r: Responder, simulated: bool = False) -> dict[str, Any]:
    """A responder as the API shows them; `simulated`: reached by simulated phones only (`--simulate-phones`)."""
    return {
        **person(r.person),
        "recipient": r.recipient,
        "neighbour_group": r.neighbour_group or None,
        "state": responder_state(r),
        "notified": {k: iso(v) for k, v in r.notified.items()},
        "delivered": {k: iso(v) for k, v in r.delivered.items()},
        "failed": dict(r.failed),
        "accepted_at": iso(r.accepted_at),
        "declined_at": iso(r.declined_at),
        "arrived_at": iso(r.arrived_at),
        "accepted_actor": actor_view(r.accepted_actor) if r.accepted_at else None,
        "accepted_proxy": r.accepted_proxy,
        "accepted_own": r.own_accept,
        "simulated": simulated,
    }


_ACTS = ("ResponderAccepted", "ResponderDeclined", "ResponderArrived", "IncidentResolved", "IncidentCancelled")


def timeline(
    history: list[Recorded], people: dict[str, Person], time_zone: str, opened: IncidentOpened | None = None
) -> list[dict[str, Any]]:
    """The incident's events as lines, in the order they happened (`at`), ties in the log's order;
    each with its time (RFC 3339, and `at_text` as people read it in `time_zone`) and its text; an
    act with its actor and whether it was a proxy answer (`opened` says what a cover means).

    The log's order is not time order: a first attempt's RespondersNotified carries the time the
    targets were handed to the channel but is recorded after the attempt's outcomes."""
    events = sorted((rec for rec in history if isinstance(rec.event, IncidentEvent)), key=lambda rec: rec.event.at)
    handed, unrouted = rounds_reached(history)
    simulated = rounds_simulated(history)
    out = []
    for rec in events:
        detail = {k: v for k, v in msgspec.to_builtins(rec.event).items() if k not in _TIMELINE_SKIP}
        entry: dict[str, Any] = {
            "seq": rec.seq,
            "at": iso(rec.event.at),
            "at_text": human_time(rec.event.at, time_zone),
            "type": type(rec.event).__name__,
        }
        alerted = _alerted(rec.event)
        reach = None
        if alerted is not None:
            why = unrouted.get(rec.seq, {})
            reach = Reach(
                len(alerted),
                len(handed.get(rec.seq, ())),
                len(why),
                next(iter(why.values()), ""),
                len(simulated.get(rec.seq, ())),
            )
            entry["reach"] = {
                "expected": reach.expected,
                "notified": reach.handed,
                "unrouted": reach.unrouted,
                "why": reach.why,
                "simulated": reach.simulated,
            }
        if entry["type"] in _ACTS:
            entry["actor"] = actor_view(getattr(rec.event, "actor", None))
            entry["proxy"] = bool(getattr(rec.event, "proxy", False))
        out.append({**entry, "text": describe(rec.event, people, reach, opened), "detail": detail})
    return out


def cover_view(state: IncidentState, history: list[Recorded]) -> dict[str, Any] | None:
    """How the incident was covered: `full` or `relaxed` (and which clauses were dropped), by proxy or not."""
    covered = next((r.event for r in history if isinstance(r.event, IncidentCovered)), None)
    if covered is None:
        return None
    relaxed = covered.relaxed if covered.kind is not None else relaxed_of(state.opened)
    return {
        "kind": "relaxed" if relaxed else "full",
        "relaxed": [list(c) for c in relaxed],
        "by_proxy": covered.by_proxy,
    }


def _alerted(event: object) -> tuple[Person, ...] | None:
    """Whom an alerting decision alerts (None: the event alerts nobody by itself)."""
    if isinstance(event, IncidentOpened):
        return event.recipients
    if isinstance(event, IncidentEscalated):
        return event.alerted
    return None


def rounds_reached(history: list[Recorded]) -> tuple[dict[int, set[str]], dict[int, dict[str, str]]]:
    """Per round (the sequence of the decision that alerted): the people handed to a channel, and
    the people no channel reaches with the reason the fan-out recorded."""
    handed: dict[int, set[str]] = {}
    unrouted: dict[int, dict[str, str]] = {}
    for rec in history:
        e = rec.event
        if isinstance(e, RespondersNotified):
            handed.setdefault(e.round, set()).update(e.phones)
        elif isinstance(e, DeliverySucceeded) and e.handed_at is not None:
            handed.setdefault(e.round, set()).update(t.phone for t in e.targets)
        elif isinstance(e, DeliveryFailed) and e.channel == NO_CHANNEL:
            unrouted.setdefault(e.round, {}).update((f.phone, f.reason) for f in e.failures)
        elif isinstance(e, DeliveryFailed) and e.handed_at is not None:
            handed.setdefault(e.round, set()).update(f.phone for f in e.failures)
    return handed, unrouted


def rounds_simulated(history: list[Recorded]) -> dict[int, set[str]]:
    """Per round: the people handed to simulated phones only (`--simulate-phones`), never to a real
    channel; round 0: over all rounds."""
    real: dict[int, set[str]] = {0: set()}
    simulated: dict[int, set[str]] = {0: set()}
    for rec in history:
        e = rec.event
        if isinstance(e, RespondersNotified):
            phones: Iterable[str] = e.phones
        elif isinstance(e, DeliverySucceeded) and e.handed_at is not None:
            phones = (t.phone for t in e.targets)
        elif isinstance(e, DeliveryFailed) and e.handed_at is not None and e.channel != NO_CHANNEL:
            phones = (f.phone for f in e.failures)
        else:
            continue
        side = simulated if e.simulated else real
        handed = set(phones)
        side.setdefault(e.round, set()).update(handed)
        side[0].update(handed)
    return {r: phones - real.get(r, set()) for r, phones in simulated.items()}


def incident_view(state: IncidentState, history: list[Recorded], time_zone: str = DEFAULT_TIME_ZONE) -> dict[str, Any]:
    """The incident as the API shows it; `time_zone` is its village's (the zone people read its times in)."""
    opened = state.opened
    people = {p: r.person for p, r in state.responders.items()}
    people[state.caller.phone] = state.caller
    simulated = rounds_simulated(history)[0]
    return {
        "incident_id": state.id,
        "kind": "unregistered" if isinstance(opened, UnregisteredCall) else "alarm",
        "silent": opened.silent,
        "drill": state.drill,
        "neighbours": {
            "order": opened.neighbours_order,
            "covers": opened.neighbour_covers,
            "groups": list(dict.fromkeys(opened.neighbour_groups)),
            "alerted_at": iso(state.neighbours_alerted_at) if state.neighbours_alerted_at else None,
        },
        "origin": opened.origin or "call",
        "opened_by": {"token_id": opened.opened_by, "name": opened.opened_by_name} if opened.opened_by else None,
        "status": state.status,
        "status_zh": STATUS_ZH.get(state.status, state.status),
        "covered": state.covered,
        "cover": cover_view(state, history),
        "proxy_counts": opened.proxy_counts,
        "village": opened.village,
        "group": opened.group,
        "line": opened.line,
        "caller": person(state.caller),
        "call_id": opened.call_id,
        "channel": opened.channel,
        "urgency": state.urgency,
        "escalation_tier": state.escalation_tier,
        "quorum": [list(c) for c in opened.quorum],
        "raised_at": iso(state.raised_at),
        "ack_deadline_at": iso(state.raised_at + timedelta(seconds=opened.ack_deadline_s)),
        "escalate_at": iso(state.raised_at + timedelta(seconds=opened.escalate_after_s)),
        "arrival_deadline_at": iso(state.covered_at + timedelta(seconds=opened.arrival_deadline_s))
        if state.covered_at
        else None,
        "first_notified_at": iso(state.first_notified_at),
        "first_accept_at": iso(state.first_accept_at),
        "covered_at": iso(state.covered_at),
        "first_arrival_at": iso(state.first_arrival_at),
        "closed_at": iso(state.closed_at),
        "category": state.category,
        "cancel_reason": state.cancel_reason,
        "note": state.note,
        "responders": [responder_view(r, r.person.phone in simulated) for r in state.responders.values()],
        "time_zone": time_zone,
        "timeline": timeline(history, people, time_zone, opened),
        "version": history[-1].seq if history else 0,
    }


def group_view(group: GroupState, duty_desks: tuple[Person, ...]) -> dict[str, Any]:
    order = {"leader": 0, "officer": 1, "assistant": 2, "household": 3}
    members = sorted(group.members.values(), key=lambda p: (order.get(p.role, 9), p.phone))
    return {
        "village": group.village,
        "group": group.group,
        "members": [person(p) for p in members],
        "duty_desks": [person(d) for d in duty_desks],
        "size": len(members),
        "version": group.last_seq,
    }
