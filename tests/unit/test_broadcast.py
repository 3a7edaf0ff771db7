"""Broadcasts in the pure domain: who is addressed, each number handed once per channel, receipts
counted once (hypothesis properties), and the decider's refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.broadcast import (
    PAGE,
    BroadcastState,
    RecordReceipt,
    StartBroadcast,
    counts,
    decide_broadcast,
    evolve_broadcast,
    fold_broadcast,
    recipients_of,
    undelivered,
)
from dispatch.domain.errors import InvalidCommand, NotFound, NotPermitted
from dispatch.events.model import (
    BroadcastAddressed,
    BroadcastHanded,
    BroadcastHeard,
    BroadcastStarted,
    Event,
    Person,
    Unreached,
)

NOW = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
VILLAGES = ("dongshan", "xishan", "nanshan")
ROLES = ("household", "leader", "assistant", "officer")

phones = st.integers(min_value=0, max_value=400).map(lambda n: f"+86138{n:08d}")
memberships = st.lists(st.tuples(st.sampled_from(VILLAGES), phones, st.sampled_from(ROLES)), min_size=0, max_size=300)


def members(rows: list[tuple[str, str, str]]) -> list[tuple[str, Person]]:
    return [(v, Person(phone=p, name=f"村民{p[-3:]}", role=r)) for v, p, r in rows]  # type: ignore[arg-type]


def started(people: tuple[Person, ...], villages: tuple[str, ...] = ("dongshan",)) -> BroadcastState:
    command = StartBroadcast(
        broadcast_id="b1",
        villages=villages,
        kind="typhoon",
        message="台风今晚登陆，请转移到村委会。",
        channels=("voice", "sms"),
        recipients=people,
    )
    return fold_broadcast("b1", decide_broadcast(BroadcastState("b1"), command, NOW))


@settings(max_examples=200, deadline=None)
@given(memberships, st.sets(st.sampled_from(VILLAGES), min_size=1))
def test_every_bound_number_of_the_villages_is_addressed_exactly_once(
    rows: list[tuple[str, str, str]], chosen: set[str]
) -> None:
    people = recipients_of(members(rows), chosen)
    wanted = {p for v, p, _ in rows if v in chosen}
    assert [p.phone for p in people] == sorted(wanted)
    if wanted:
        state = started(people, tuple(chosen))
        events_pages = [p.phone for p in state.recipients.values()]
        assert sorted(events_pages) == sorted(wanted)
        assert state.started is not None and state.started.total == len(wanted)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=3 * PAGE + 7))
def test_the_recipients_are_recorded_in_pages_that_cover_everyone_once(n: int) -> None:
    people = tuple(Person(phone=f"+8613{i:09d}", role="household") for i in range(n))
    events = decide_broadcast(
        BroadcastState("b1"),
        StartBroadcast(
            broadcast_id="b1",
            villages=("dongshan",),
            kind="flood",
            message="洪水",
            channels=("sms",),
            recipients=people,
        ),
        NOW,
    )
    head, *rest = events
    assert isinstance(head, BroadcastStarted) and head.pages == len(rest) == -(-n // PAGE)
    assert all(isinstance(e, BroadcastAddressed) and 1 <= len(e.people) <= PAGE for e in rest)
    flat = [p.phone for e in rest if isinstance(e, BroadcastAddressed) for p in e.people]
    assert flat == sorted({p.phone for p in people})


chunks = st.lists(
    st.tuples(
        st.sampled_from(("voice", "sms")), st.lists(st.integers(min_value=0, max_value=49), max_size=20), st.booleans()
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(chunks)
def test_each_number_is_handed_at_most_once_per_channel_whatever_is_redelivered(
    outcomes: list[tuple[str, list[int], bool]],
) -> None:
    people = tuple(Person(phone=f"+8613800{i:06d}", role="household") for i in range(50))
    state = started(people)
    handed_total: dict[str, int] = {"voice": 0, "sms": 0}
    for chunk, (channel, picks, ok) in enumerate(outcomes):
        # a worker rings only who is left of its chunk (a redelivered chunk repeats the same people)
        left = undelivered(state, channel, [people[i] for i in picks])
        phones = tuple(dict.fromkeys(p.phone for p in left))
        event = BroadcastHanded(
            at=NOW,
            broadcast_id="b1",
            channel=channel,
            chunk=chunk,
            phones=phones if ok else (),
            failures=() if ok else tuple(Unreached(phone=p, kind="permanent", reason="HTTP 404") for p in phones),
        )
        handed_total[channel] += len(phones)
        evolve_broadcast(state, event)
        assert undelivered(state, channel, left) == ()
    tally = counts(state)
    for channel in ("voice", "sms"):
        assert tally.handed[channel] + tally.failed[channel] == handed_total[channel] <= len(people)
        assert not set(state.handed.get(channel, {})) & set(state.failed.get(channel, {}))
    assert tally.reached <= tally.total == len(people)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=19), st.sampled_from(("keypad", "sms"))), max_size=60))
def test_a_receipt_is_counted_once_per_number(receipts: list[tuple[int, str]]) -> None:
    people = tuple(Person(phone=f"+8613800{i:06d}", role="household") for i in range(20))
    state = started(people)
    events: list[Event] = []
    for i, via in receipts:
        decided = decide_broadcast(
            state,
            RecordReceipt(broadcast_id="b1", phone=people[i].phone, via=via),
            NOW + timedelta(seconds=len(events)),  # type: ignore[arg-type]
        )
        for event in decided:
            evolve_broadcast(state, event)
        events += decided
    assert len(events) == len({i for i, _ in receipts}) == counts(state).heard
    assert all(isinstance(e, BroadcastHeard) for e in events)
    # folding the same receipts twice (a replay that meets a duplicate) changes nothing
    for event in events:
        evolve_broadcast(state, event)
    assert counts(state).heard == len(events)


def test_a_receipt_from_a_number_not_addressed_is_refused() -> None:
    state = started((Person(phone="+8613800000001", role="household"),))
    with pytest.raises(NotPermitted):
        decide_broadcast(state, RecordReceipt(broadcast_id="b1", phone="+8613800000099", via="sms"), NOW)
    with pytest.raises(NotFound):
        decide_broadcast(BroadcastState("b2"), RecordReceipt(broadcast_id="b2", phone="+8613800000001", via="sms"), NOW)


def test_starting_again_decides_nothing_and_bad_starts_are_refused() -> None:
    one = (Person(phone="+8613800000001", role="household"),)
    state = started(one)
    again = StartBroadcast(
        broadcast_id="b1", villages=("dongshan",), kind="typhoon", message="再来", channels=("sms",), recipients=one
    )
    assert decide_broadcast(state, again, NOW) == []
    fresh = BroadcastState("b3")
    for bad in (
        {"villages": ()},
        {"villages": ("a b",)},
        {"message": "  "},
        {"message": "字" * 301},
        {"channels": ()},
        {"recipients": ()},
        {"kind": "party"},
    ):
        command = StartBroadcast(
            **{  # type: ignore[arg-type]
                "broadcast_id": "b3",
                "villages": ("dongshan",),
                "kind": "flood",
                "message": "洪水",
                "channels": ("sms",),
                "recipients": one,
                **bad,
            }
        )
        with pytest.raises(InvalidCommand):
            decide_broadcast(fresh, command, NOW)
