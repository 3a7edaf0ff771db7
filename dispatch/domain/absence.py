"""Absences with substitutes: a member away for a period, and who is rung in their place.

A member (one number, whichever groups it serves) is an aggregate of its own, on
`dispatch.evt.member.<digits>`; it decides as `decide_member(state, command, now)` and folds as
`evolve_member(state, event)`. Time enters only as `now` (the decision's clock) and as the
period's bounds: an absence holds over `[starts, until)`, start included, end excluded.

Invariants:
- an absence has `starts < until`, lasts at most MAX_ABSENCE, starts at most MAX_ABSENCE ahead,
  ends after `now` (a period wholly
  past is refused) and names a substitute other than the member; setting one replaces the one
  before; setting the same one again, or ending one that is over or was never set, decides
  nothing (a retried request is safe);
- only a number bound in a group may be marked absent (NotFound otherwise); the substitute may be
  anyone reachable: a member of the same group, another village's officer, or a number in no
  group at all (the township's officer on loan);
- while absent (`absent_at(now)`), a member is never rung by a new alarm: `stand_ins` leaves them
  out and puts their substitute in, in the member's role of that group (so a cover clause needing
  that role is met by the substitute's accept, or by the member's own if they answer anyway); a
  substitute already rung in the group is rung once, in whichever of the two roles ranks first
  (officer, assistant, leader, household); a substitute who is away themselves is not rung (no
  chains); before `starts` and from `until` on, nothing changes;
- the absent member stays able to answer (`absent` on the alarm: not rung, allowed to accept).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from dispatch.domain.errors import InvalidCommand, NotFound
from dispatch.events.model import AbsenceEnded, AbsenceSet, Actor, Event, Person

MAX_ABSENCE = timedelta(days=366)
MAX_NOTE = 200
ROLE_RANK: dict[str, int] = {"officer": 0, "assistant": 1, "leader": 2, "household": 3, "duty": 4}


@dataclass(frozen=True, slots=True)
class Absence:
    """One member's absence as folded: the period, the substitute (None: nobody) and who set it."""

    phone: str
    starts: datetime
    until: datetime
    substitute: str | None
    substitute_name: str = ""
    note: str = ""
    set_at: datetime | None = None
    actor: Actor | None = None

    def absent_at(self, now: datetime) -> bool:
        """Whether the member is away at `now` (start included, end excluded)."""
        return self.starts <= now < self.until

    def over_at(self, now: datetime) -> bool:
        """Whether the absence has ended by `now`."""
        return self.until <= now


@dataclass(frozen=True, slots=True)
class MemberState:
    """A number as the absence decider sees it: whether it is bound in a live group, and its absence."""

    phone: str
    bound: bool
    absence: Absence | None = None


class SetAbsence(msgspec.Struct, frozen=True, kw_only=True):
    """Mark `phone` absent over [starts, until) with `substitute` (None: nobody) rung in their place;
    `starts` None: from now, or from the current absence's start when it has begun (so the same
    request sent again decides nothing, and a changed end keeps the start)."""

    phone: str
    starts: datetime | None
    until: datetime
    substitute: str | None = None
    substitute_name: str = ""
    note: str = ""
    actor: Actor | None = None


class EndAbsence(msgspec.Struct, frozen=True, kw_only=True):
    """End `phone`'s absence now (or call off one not begun)."""

    phone: str
    actor: Actor | None = None


MemberCommand = SetAbsence | EndAbsence


def decide_member(state: MemberState, command: MemberCommand, now: datetime) -> list[Event]:
    """The member's decider: the events `command` makes of `state` at `now`. Raises NotFound (a number
    in no group) and InvalidCommand (a period or substitute that makes no sense)."""
    current = state.absence
    if isinstance(command, EndAbsence):
        if current is None or current.over_at(now):
            return []
        return [AbsenceEnded(at=now, phone=state.phone, actor=command.actor)]
    if not state.bound:
        raise NotFound(f"{command.phone} is in no group; only a member can be marked absent")
    c = command
    if c.starts is None:
        began = current is not None and current.absent_at(now)
        c = msgspec.structs.replace(c, starts=current.starts if current is not None and began else now)
    assert c.starts is not None
    if c.starts.tzinfo is None or c.until.tzinfo is None:
        raise InvalidCommand("from and until need a time zone (e.g. 2026-12-05T08:00:00+08:00)")
    if c.until <= c.starts:
        raise InvalidCommand("until must be after from")
    if c.until <= now:
        raise InvalidCommand("the absence is already over: until must be in the future")
    if c.until - c.starts > MAX_ABSENCE:
        raise InvalidCommand(f"an absence lasts at most {MAX_ABSENCE.days} days")
    if c.starts - now > MAX_ABSENCE:
        raise InvalidCommand(f"an absence starts at most {MAX_ABSENCE.days} days ahead")
    if c.substitute is not None and not _e164(c.substitute):
        raise InvalidCommand("substitute must be a phone number")
    if c.substitute == state.phone:
        raise InvalidCommand("a member cannot substitute for themselves")
    if len(c.note) > MAX_NOTE or len(c.substitute_name) > 64:
        raise InvalidCommand(f"note at most {MAX_NOTE} characters, substitute_name at most 64")
    if not all(_shown_as_typed(text) for text in (c.note, c.substitute_name)):
        raise InvalidCommand("a note or name may not hold a control, format or line-separator character")
    if current is not None and (
        current.starts,
        current.until,
        current.substitute,
        current.substitute_name,
        current.note,
    ) == (c.starts, c.until, c.substitute, c.substitute_name, c.note):
        return []
    return [
        AbsenceSet(
            at=now,
            phone=state.phone,
            starts=c.starts,
            until=c.until,
            substitute=c.substitute,
            substitute_name=c.substitute_name,
            note=c.note,
            actor=c.actor,
        )
    ]


def evolve_member(state: Absence | None, event: Event) -> Absence | None:
    """Fold one member event into the member's absence (None: none set, or ended)."""
    if isinstance(event, AbsenceSet):
        return Absence(
            phone=event.phone,
            starts=event.starts,
            until=event.until,
            substitute=event.substitute,
            substitute_name=event.substitute_name,
            note=event.note,
            set_at=event.at,
            actor=event.actor,
        )
    if isinstance(event, AbsenceEnded):
        return None
    return state


def _shown_as_typed(text: str) -> bool:
    """No character that could turn a screen's text around or break its line (as roster names;
    the joiners some scripts spell names with are allowed)."""
    return text.isprintable() or all(
        unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp") or ch in "\u200c\u200d\u180e" for ch in text
    )


def _e164(phone: str) -> bool:
    return phone.startswith("+") and phone[1:].isdigit() and 3 <= len(phone) - 1 <= 20


def stand_ins(
    members: Iterable[Person],
    absences: Mapping[str, Absence],
    now: datetime,
    known: Callable[[str], Person | None] | None = None,
) -> tuple[list[Person], list[Person]]:
    """Who a group's alarm rings at `now`, and who it leaves out: (rung, absent). Each absent member's
    substitute is rung in the member's role (`stands_in_for` names the member), unless away too;
    a number is rung once, in its best-ranked role. `known`: the substitute as the roster has them
    (their name when the absence gave none, and the language their voice alarm is spoken in)."""
    rung: dict[str, Person] = {}
    absent: list[Person] = []
    substitutes: list[Person] = []

    def away(phone: str) -> bool:
        a = absences.get(phone)
        return a is not None and a.absent_at(now)

    for person in members:
        if not away(person.phone):
            rung[person.phone] = person
            continue
        absent.append(person)
        a = absences[person.phone]
        if a.substitute is not None and not away(a.substitute):
            roster = known(a.substitute) if known is not None else None
            name = a.substitute_name or (roster.name if roster is not None else "")
            language = roster.language if roster is not None else ""
            substitutes.append(
                Person(phone=a.substitute, name=name, role=person.role, stands_in_for=person.phone, language=language)
            )
    for sub in substitutes:
        have = rung.get(sub.phone)
        if have is None or ROLE_RANK.get(sub.role, 9) < ROLE_RANK.get(have.role, 9):
            rung[sub.phone] = sub
    return list(rung.values()), absent
