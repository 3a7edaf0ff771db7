"""Broadcasts: a warning (typhoon, flood, a missing child) to every member of one or more villages,
by voice and SMS, with a "press 1 when heard" receipt.

A broadcast is an aggregate of its own on `dispatch.evt.broadcast.<id>`; it decides as
`decide_broadcast(state, command, now)` and folds as `evolve_broadcast(state, event)`. Its delivery
observations (BroadcastHanded) are facts on `dispatch.evt.broadcast.<id>.out`, folded by the same
`evolve_broadcast`. No I/O here: the recipients are resolved from the directory by the caller
(`recipients_of`) and passed in the command.

Invariants:
- every number bound in a group of the broadcast's villages is a recipient exactly once, however many
  groups or villages it serves; numbers of other villages never are (`recipients_of`);
- the recipients are recorded in the starting decision, in pages of at most PAGE numbers
  (BroadcastAddressed), so the report names everyone addressed even after the roster changes;
- starting a broadcast that exists decides nothing (a retried request with the same id is safe);
  a broadcast needs a village, a message of 1..MAX_MESSAGE characters, a channel, and a recipient;
- a number is handed to each channel at most once: `undelivered` leaves out whoever a chunk has
  already handed or given up on; a receipt is counted once per number (a second one decides
  nothing) and only from a recipient (NotPermitted otherwise);
- `counts` costs the same for a county as for a village: the state keeps its tallies as it folds
  (`reached`: recipients handed on any of the broadcast's channels; `settled`: recipients every
  channel has handed or given up on), always equal to counting them over every recipient
  (`recount`), so a report polled during a 100k broadcast never walks the 100k;
- `people_page` is the recipients by number from `offset`: it sorts them only when the pages were
  folded out of order (`in_order`), which the decider's own pages never are, so the console's page
  of 200 people costs 200 rows, not a sort of the county.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from dispatch.domain.errors import InvalidCommand, NotFound, NotPermitted
from dispatch.events.model import (
    BROADCAST_KINDS,
    Actor,
    BroadcastAddressed,
    BroadcastHanded,
    BroadcastHeard,
    BroadcastKind,
    BroadcastStarted,
    Event,
    Person,
    ReceiptVia,
    Unreached,
)
from dispatch.events.subjects import InvalidToken, check_token

PAGE = 1000
MAX_MESSAGE = 300
MAX_VILLAGES = 500
KIND_ZH: dict[str, str] = {
    "typhoon": "台风预警",
    "flood": "洪水预警",
    "missing_child": "寻找走失儿童",
    "other": "紧急通知",
}


@dataclass(slots=True)
class BroadcastState:
    """A broadcast as folded: what was started, who is addressed, what each channel was handed, who heard."""

    id: str
    started: BroadcastStarted | None = None
    recipients: dict[str, Person] = field(default_factory=dict)
    handed: dict[str, dict[str, datetime]] = field(default_factory=dict)
    failed: dict[str, dict[str, Unreached]] = field(default_factory=dict)
    heard: dict[str, BroadcastHeard] = field(default_factory=dict)
    reached: int = 0
    settled_all: int = 0
    in_order: bool = True

    @property
    def exists(self) -> bool:
        """Whether the broadcast was started."""
        return self.started is not None

    def settled(self, channel: str, phone: str) -> bool:
        """Whether `channel` has handed `phone` or given up on it (two lookups: a chunk of a county's
        broadcast asks this of its hundred numbers, never of the whole county)."""
        return phone in self.handed.get(channel, ()) or phone in self.failed.get(channel, ())


class StartBroadcast(msgspec.Struct, frozen=True, kw_only=True):
    """Warn `recipients` (resolved from `villages` by `recipients_of`) on `channels`."""

    broadcast_id: str
    villages: tuple[str, ...]
    kind: BroadcastKind
    message: str
    channels: tuple[str, ...]
    recipients: tuple[Person, ...]
    actor: Actor | None = None


class RecordReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """`phone` heard the warning (pressed or replied 1)."""

    broadcast_id: str
    phone: str
    via: ReceiptVia
    actor: Actor | None = None


BroadcastCommand = StartBroadcast | RecordReceipt


def recipients_of(members: Iterable[tuple[str, Person]], villages: Iterable[str]) -> tuple[Person, ...]:
    """Every number bound in `villages`, once (its first membership met), by number: `members` is
    (village, person) for every membership of every live group."""
    chosen: dict[str, Person] = {}
    choose(chosen, members, frozenset(villages))
    return tuple(chosen[phone] for phone in sorted(chosen))


def choose(chosen: dict[str, Person], members: Iterable[tuple[str, Person]], wanted: frozenset[str]) -> None:
    """Add to `chosen` (by number) each of `members` bound in `wanted` whose number it lacks: a
    county's memberships taken a page at a time give the same recipients as `recipients_of`."""
    for village, person in members:
        if village in wanted and person.phone not in chosen:
            chosen[person.phone] = Person(
                phone=person.phone, name=person.name, role=person.role, language=person.language
            )


def distinct(people: Iterable[Person]) -> tuple[Person, ...]:
    """Each number once (its first occurrence), by number."""
    chosen: dict[str, Person] = {}
    for person in people:
        chosen.setdefault(person.phone, person)
    return tuple(chosen[phone] for phone in sorted(chosen))


def pages(people: Sequence[Person], size: int = PAGE) -> list[tuple[Person, ...]]:
    """`people` cut into pages of at most `size`, in order."""
    return [tuple(people[i : i + size]) for i in range(0, len(people), size)]


def decide_broadcast(state: BroadcastState, command: BroadcastCommand, now: datetime) -> list[Event]:
    """The broadcast's decider. Raises InvalidCommand (nothing to send, or to nobody), NotFound (a
    receipt for a broadcast never started) and NotPermitted (a receipt from a number not addressed)."""
    if isinstance(command, RecordReceipt):
        if not state.exists:
            raise NotFound(f"no broadcast {command.broadcast_id}")
        if command.phone not in state.recipients:
            raise NotPermitted("this number was not sent this broadcast")
        if command.phone in state.heard:
            return []
        return [
            BroadcastHeard(at=now, broadcast_id=state.id, phone=command.phone, via=command.via, actor=command.actor)
        ]
    if state.exists:
        return []
    c = command
    villages = tuple(sorted(set(c.villages)))
    if not villages or len(villages) > MAX_VILLAGES:
        raise InvalidCommand(f"villages: one to {MAX_VILLAGES} villages")
    try:
        for village in villages:
            check_token("village", village)
    except InvalidToken as exc:
        raise InvalidCommand(str(exc)) from None
    if c.kind not in BROADCAST_KINDS:
        raise InvalidCommand(f"kind must be one of {', '.join(BROADCAST_KINDS)}")
    message = c.message.strip()
    if not message or len(message) > MAX_MESSAGE:
        raise InvalidCommand(f"message: 1 to {MAX_MESSAGE} characters")
    channels = tuple(dict.fromkeys(c.channels))
    if not channels:
        raise InvalidCommand("channels: at least one (voice, sms)")
    people = distinct(c.recipients)
    if not people:
        raise InvalidCommand("nobody is bound in these villages: there is no one to warn")
    cut = pages(people)
    started = BroadcastStarted(
        at=now,
        broadcast_id=state.id,
        villages=villages,
        kind=c.kind,
        message=message,
        channels=channels,
        total=len(people),
        pages=len(cut),
        actor=c.actor,
    )
    return [started, *(BroadcastAddressed(at=now, broadcast_id=state.id, page=i, people=p) for i, p in enumerate(cut))]


def _tally(state: BroadcastState) -> tuple[int, int]:
    """`reached` and `settled_all` counted over every recipient (O(recipients))."""
    channels = state.started.channels if state.started else ()
    if not channels:
        return 0, 0
    handed = [state.handed.get(c, {}) for c in channels]
    reached = sum(1 for phone in state.recipients if any(phone in h for h in handed))
    settled = sum(1 for phone in state.recipients if all(state.settled(c, phone) for c in channels))
    return reached, settled


def _newly_settled(state: BroadcastState, channel: str, phone: str, handed: bool) -> None:
    """Update the tallies for `phone` just handed (or given up on) by `channel`, where it was neither."""
    channels = state.started.channels if state.started else ()
    if channel not in channels:
        return
    if handed and not any(phone in state.handed.get(c, ()) for c in channels if c != channel):
        state.reached += 1
    if all(c == channel or state.settled(c, phone) for c in channels):
        state.settled_all += 1


def evolve_broadcast(state: BroadcastState, event: Event) -> BroadcastState:
    """Fold one event of the broadcast (decisions and delivery observations) into `state`, in place."""
    if isinstance(event, BroadcastStarted):
        state.started = event
        if state.handed or state.failed:  # outcomes folded before their start: never in log order
            state.reached, state.settled_all = _tally(state)
    elif isinstance(event, BroadcastAddressed):
        recipients = state.recipients
        for person in event.people:
            if person.phone not in recipients:
                if state.in_order and recipients and person.phone < next(reversed(recipients)):
                    state.in_order = False
                recipients[person.phone] = person
    elif isinstance(event, BroadcastHanded):
        handed = state.handed.setdefault(event.channel, {})
        failed = state.failed.setdefault(event.channel, {})
        for phone in event.phones:
            if phone in state.recipients and phone not in failed and phone not in handed:
                _newly_settled(state, event.channel, phone, True)
                handed[phone] = event.at
        for failure in event.failures:
            phone = failure.phone
            if phone in state.recipients and phone not in handed and phone not in failed:
                _newly_settled(state, event.channel, phone, False)
                failed[phone] = failure
    elif isinstance(event, BroadcastHeard) and event.phone in state.recipients:
        state.heard.setdefault(event.phone, event)
    return state


def fold_broadcast(broadcast_id: str, events: Iterable[Event]) -> BroadcastState:
    """A broadcast's state from its events in log order."""
    state = BroadcastState(broadcast_id)
    for event in events:
        evolve_broadcast(state, event)
    return state


def people_page(state: BroadcastState, offset: int = 0, limit: int | None = None) -> list[tuple[str, Person]]:
    """The recipients by number, `limit` of them from `offset` (all when None): O(offset + limit)
    when they were addressed in order, as the decider pages them."""
    stop = None if limit is None else offset + limit
    if state.in_order:
        return list(itertools.islice(state.recipients.items(), offset, stop))
    return sorted(state.recipients.items())[offset:stop]


def undelivered(state: BroadcastState, channel: str, people: Iterable[Person]) -> tuple[Person, ...]:
    """Those of `people` that `channel` has neither handed nor given up on (a redelivered chunk rings
    only who is left)."""
    return tuple(p for p in people if not state.settled(channel, p.phone))


@dataclass(frozen=True, slots=True)
class Counts:
    """A broadcast's tally: recipients, handed and failed per channel, reached on any channel, heard."""

    total: int
    handed: dict[str, int]
    failed: dict[str, int]
    reached: int
    heard: int
    pending: int


def counts(state: BroadcastState) -> Counts:
    """The tally a report shows, every number counted once in each column: from the tallies the
    state keeps as it folds (O(channels), whatever the number of recipients)."""
    return _counts(state, state.reached, state.settled_all)


def recount(state: BroadcastState) -> Counts:
    """`counts` counted over every recipient (O(recipients)): what the kept tallies must always equal."""
    return _counts(state, *_tally(state))


def _counts(state: BroadcastState, reached: int, settled: int) -> Counts:
    channels = state.started.channels if state.started else ()
    return Counts(
        total=len(state.recipients),
        handed={c: len(state.handed.get(c, {})) for c in channels},
        failed={c: len(state.failed.get(c, {})) for c in channels},
        reached=reached,
        heard=len(state.heard),
        pending=len(state.recipients) - settled if channels else 0,
    )


def warning_text(state: BroadcastState) -> str:
    """The SMS text of the warning, with how to confirm (Simplified Chinese)."""
    started = state.started
    assert started is not None
    return f"【6995{KIND_ZH.get(started.kind, '紧急通知')}】{started.message} 收到请回复1。"


def spoken_text(state: BroadcastState) -> str:
    """What the voice call says, with the keypad receipt (Simplified Chinese)."""
    started = state.started
    assert started is not None
    return f"这里是6995{KIND_ZH.get(started.kind, '紧急通知')}。{started.message}。听到请按1，重听请按9。"
