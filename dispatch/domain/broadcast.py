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
  nothing) and only from a recipient (NotPermitted otherwise).
"""

from __future__ import annotations

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
    wanted = frozenset(villages)
    chosen: dict[str, Person] = {}
    for village, person in members:
        if village in wanted and person.phone not in chosen:
            chosen[person.phone] = Person(
                phone=person.phone, name=person.name, role=person.role, language=person.language
            )
    return tuple(chosen[phone] for phone in sorted(chosen))


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


def evolve_broadcast(state: BroadcastState, event: Event) -> BroadcastState:
    """Fold one event of the broadcast (decisions and delivery observations) into `state`, in place."""
    if isinstance(event, BroadcastStarted):
        state.started = event
    elif isinstance(event, BroadcastAddressed):
        for person in event.people:
            state.recipients.setdefault(person.phone, person)
    elif isinstance(event, BroadcastHanded):
        handed = state.handed.setdefault(event.channel, {})
        failed = state.failed.setdefault(event.channel, {})
        for phone in event.phones:
            if phone in state.recipients and phone not in failed:
                handed.setdefault(phone, event.at)
        for failure in event.failures:
            if failure.phone in state.recipients and failure.phone not in handed:
                failed.setdefault(failure.phone, failure)
    elif isinstance(event, BroadcastHeard) and event.phone in state.recipients:
        state.heard.setdefault(event.phone, event)
    return state


def fold_broadcast(broadcast_id: str, events: Iterable[Event]) -> BroadcastState:
    """A broadcast's state from its events in log order."""
    state = BroadcastState(broadcast_id)
    for event in events:
        evolve_broadcast(state, event)
    return state


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
    """The tally a report shows; every number counted once in each column."""
    channels = state.started.channels if state.started else ()
    handed = [state.handed.get(c, {}) for c in channels]
    reached = sum(1 for phone in state.recipients if any(phone in h for h in handed))
    pending = sum(1 for phone in state.recipients if not all(state.settled(c, phone) for c in channels))
    return Counts(
        total=len(state.recipients),
        handed={c: len(state.handed.get(c, {})) for c in channels},
        failed={c: len(state.failed.get(c, {})) for c in channels},
        reached=reached,
        heard=len(state.heard),
        pending=pending,
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
