"""Broadcasts in the pure domain: who is addressed, each number handed once per channel, receipts
counted once (hypothesis properties), and the decider's refusals."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.broadcast import (
    PAGE,
    BroadcastState,
    RecordReceipt,
    StartBroadcast,
    choose,
    counts,
    decide_broadcast,
    evolve_broadcast,
    fold_broadcast,
    people_page,
    recipients_of,
    recount,
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


def flood_warning(people: tuple[Person, ...], channels: tuple[str, ...] = ("sms",)) -> list[Event]:
    """What the decider makes of a new flood warning to `people` of dongshan on `channels`."""
    command = StartBroadcast(
        broadcast_id="b1", villages=("dongshan",), kind="flood", message="洪水", channels=channels, recipients=people
    )
    return decide_broadcast(BroadcastState("b1"), command, NOW)


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


@settings(max_examples=200, deadline=None)
@given(memberships, st.sets(st.sampled_from(VILLAGES), min_size=1), st.lists(st.integers(min_value=0, max_value=300)))
def test_memberships_chosen_a_page_at_a_time_give_the_same_recipients(
    rows: list[tuple[str, str, str]], chosen: set[str], cuts: list[int]
) -> None:
    """The handler walks a county's groups a page at a time (giving way between pages): the same
    recipients, each number once with its first membership, as one pass."""
    every = members(rows)
    picked: dict[str, Person] = {}
    bounds = [0, *sorted(c for c in cuts if c < len(every)), len(every)]
    for lo, hi in itertools.pairwise(bounds):
        choose(picked, every[lo:hi], frozenset(chosen))
    assert tuple(picked[p] for p in sorted(picked)) == recipients_of(every, chosen)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=3 * PAGE + 7))
def test_the_recipients_are_recorded_in_pages_that_cover_everyone_once(n: int) -> None:
    people = tuple(Person(phone=f"+8613{i:09d}", role="household") for i in range(n))
    events = flood_warning(people)
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


outcome_events = st.lists(
    st.tuples(
        st.sampled_from(("voice", "sms", "fax")),
        st.lists(st.integers(min_value=0, max_value=59), max_size=12),
        st.lists(st.integers(min_value=0, max_value=59), max_size=6),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(outcome_events, st.integers(min_value=0, max_value=3), st.sampled_from((("voice", "sms"), ("sms",))))
def test_the_kept_tallies_always_equal_counting_every_recipient(
    outcomes: list[tuple[str, list[int], list[int]]], started_after: int, channels: tuple[str, ...]
) -> None:
    """The counts a report polls are kept as the state folds: after every event (handed, failed, the
    same number again on one channel or on another, numbers never addressed, a channel the broadcast
    does not use, even outcomes folded before the start), they equal counting every recipient."""
    people = tuple(Person(phone=f"+8613800{i:06d}", role="household") for i in range(50))
    decided = flood_warning(people, channels)
    start, pages_ = decided[0], decided[1:]
    handed_events: list[Event] = [
        BroadcastHanded(
            at=NOW + timedelta(seconds=i),
            broadcast_id="b1",
            channel=channel,
            chunk=i,
            phones=tuple(f"+8613800{n:06d}" for n in handed),
            failures=tuple(Unreached(phone=f"+8613800{n:06d}", kind="permanent", reason="HTTP 404") for n in failed),
        )
        for i, (channel, handed, failed) in enumerate(outcomes)
    ]
    events = [*pages_, *handed_events]
    events.insert(min(started_after, len(events)) if started_after else 0, start)  # the start, mostly first
    state = BroadcastState("b1")
    for event in events:
        evolve_broadcast(state, event)
        assert counts(state) == recount(state)
    assert counts(state).pending == len(people) - sum(all(state.settled(c, p.phone) for c in channels) for p in people)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(phones, max_size=15), max_size=6),
    st.integers(min_value=0, max_value=100),
    st.none() | st.integers(min_value=1, max_value=100),
)
def test_a_page_of_people_is_the_recipients_by_number_whatever_order_the_pages_came_in(
    pages_: list[list[str]], offset: int, limit: int | None
) -> None:
    state = BroadcastState("b1")
    for i, page in enumerate(pages_):
        people = tuple(Person(phone=p, role="household") for p in page)
        evolve_broadcast(state, BroadcastAddressed(at=NOW, broadcast_id="b1", page=i, people=people))
    expected = sorted(state.recipients.items())[offset : None if limit is None else offset + limit]
    assert people_page(state, offset, limit) == expected


def test_the_deciders_pages_are_folded_in_order_so_a_page_of_people_needs_no_sort() -> None:
    people = tuple(Person(phone=f"+8613{i:09d}", role="household") for i in reversed(range(2 * PAGE + 5)))
    state = started(people)
    assert state.in_order
    assert [p for p, _ in people_page(state, PAGE - 2, 4)] == [f"+8613{i:09d}" for i in range(PAGE - 2, PAGE + 2)]


def test_counts_do_not_walk_the_recipients() -> None:
    """A county's counts are read without touching its recipients: the poll of a 100k broadcast is
    not a 100k loop on the service's event loop (the stall that held alarms back, issue 23)."""

    class Untouchable(dict[str, Person]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("counts() walked every recipient")

        def keys(self):  # type: ignore[no-untyped-def]
            raise AssertionError("counts() walked every recipient")

        def values(self):  # type: ignore[no-untyped-def]
            raise AssertionError("counts() walked every recipient")

        def items(self):  # type: ignore[no-untyped-def]
            raise AssertionError("counts() walked every recipient")

    people = tuple(Person(phone=f"+8613{i:09d}", role="household") for i in range(3 * PAGE))
    state = started(people)
    for channel in ("voice", "sms"):
        evolve_broadcast(
            state,
            BroadcastHanded(
                at=NOW, broadcast_id="b1", channel=channel, chunk=0, phones=tuple(p.phone for p in people[:1500])
            ),
        )
    expected = recount(state)
    state.recipients = Untouchable(state.recipients)
    assert counts(state) == expected
    assert expected.reached == 1500 and expected.pending == 3 * PAGE - 1500


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
