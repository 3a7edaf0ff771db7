"""The event store against a real nats-server: conflicts, duplicate retries, atomic batches, loads."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS

from dispatch.events.model import CallRouted, GroupFormed, MemberBound
from dispatch.events.subjects import InvalidSubject
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing, StoreUnavailable
from dispatch.store.provision import provision
from dispatch.store.server import EmbeddedNats
from tests.support import eventually
from tests.unit.fixtures import at


def formed(group: str = "1") -> GroupFormed:
    return GroupFormed(at=at(), village="v", group=group)


def bound(phone: str, group: str = "1") -> MemberBound:
    return MemberBound(at=at(), village="v", group=group, phone=phone, name="n", role="household")


@pytest.fixture
async def store(nc: NATS) -> EventStore:
    await provision(nc)
    return EventStore(nc, timeout=1.0)


async def test_append_and_load_in_order(store: EventStore) -> None:
    subject = "dispatch.evt.group.v.1"
    seqs = await store.append([Outgoing(subject, formed(), "cmd-1:0", expected_seq=0)])
    more = await store.append([Outgoing(subject, bound("+8613800000001"), "cmd-2:0", expected_seq=seqs[0])])
    loaded = await store.load(subject)
    assert [r.seq for r in loaded] == [seqs[0], more[0]]
    assert loaded[0].event == formed() and loaded[1].msg_id == "cmd-2:0"
    last = await store.last(subject)
    assert last is not None and last.seq == more[0]
    assert await store.last("dispatch.evt.group.v.none") is None
    assert await store.load("dispatch.evt.group.v.none") == []


async def test_last_of_several_subjects_in_one_request(store: EventStore) -> None:
    one, two, empty = "dispatch.evt.group.v.1", "dispatch.evt.group.v.2", "dispatch.evt.group.v.none"
    [a] = await store.append([Outgoing(one, formed(), "lo-1:0", expected_seq=0)])
    [b] = await store.append([Outgoing(one, bound("+8613800000001"), "lo-1:1", expected_seq=a)])
    [c] = await store.append([Outgoing(two, formed(), "lo-2:0", expected_seq=0)])
    found = await store.last_of([one, two, empty])
    assert sorted(found) == [one, two]
    assert (found[one].seq, found[one].msg_id, found[one].event) == (b, "lo-1:1", bound("+8613800000001"))
    assert (found[two].seq, found[two].subject) == (c, two)
    assert await store.last_of([empty]) == {}


async def test_a_stale_expected_sequence_is_a_conflict(store: EventStore) -> None:
    subject = "dispatch.evt.group.v.1"
    await store.append([Outgoing(subject, formed(), "a:0", expected_seq=0)])
    with pytest.raises(AppendConflict):
        await store.append([Outgoing(subject, bound("+8613800000001"), "b:0", expected_seq=0)])
    assert len(await store.load(subject)) == 1


async def test_a_retried_append_returns_the_stored_sequence(store: EventStore) -> None:
    subject = "dispatch.evt.group.v.1"
    message = Outgoing(subject, formed(), "same:0", expected_seq=0)
    first = await store.append([message])
    again = await store.append([message])
    assert again == first
    plain = Outgoing(subject, bound("+8613800000001"), "plain:0")
    assert await store.append([plain]) == await store.append([plain])
    assert len(await store.load(subject)) == 2


async def test_an_atomic_batch_is_stored_whole_or_not_at_all(store: EventStore) -> None:
    g1, g2 = "dispatch.evt.group.v.1", "dispatch.evt.group.v.2"
    await store.append([Outgoing(g2, formed("2"), "pre:0", expected_seq=0)])
    batch = [
        Outgoing(g1, formed(), "batch:0", expected_seq=0),
        Outgoing(g1, bound("+8613800000001"), "batch:1"),
        Outgoing(g2, bound("+8613800000002", "2"), "batch:2", expected_seq=0),
    ]
    with pytest.raises(AppendConflict):
        await store.append(batch)
    assert await store.load(g1) == []
    assert len(await store.load(g2)) == 1

    good = [batch[0], batch[1], Outgoing(g2, bound("+8613800000002", "2"), "batch:2", expected_seq=1)]
    seqs = await store.append(good)
    assert seqs == [2, 3, 4]
    assert await store.append(good) == seqs
    assert [r.seq for r in await store.load(g1)] == [2, 3]


async def test_concurrent_deciders_one_wins(store: EventStore) -> None:
    subject = "dispatch.evt.call.abc"

    async def route(n: int) -> str:
        event = CallRouted(at=at(), call_id="c", incident_id=f"i{n}", status="raised")
        try:
            await store.append([Outgoing(subject, event, f"route-{n}:0", expected_seq=0)])
            return "won"
        except AppendConflict:
            return "lost"

    results = await asyncio.gather(*(route(n) for n in range(8)))
    assert results.count("won") == 1
    assert len(await store.load(subject)) == 1


async def test_loads_page_past_one_thousand(store: EventStore) -> None:
    subject = "dispatch.evt.group.v.big"
    for start in range(0, 2500, 500):
        await store.append(
            [Outgoing(subject, bound(f"+86138{i:08d}", "big"), f"p{i}:0") for i in range(start, start + 500)]
        )
    loaded = await store.load(subject)
    assert len(loaded) == 2500
    assert [r.seq for r in loaded] == list(range(1, 2501))
    assert len(await store.load(subject, after=2400)) == 100


async def test_nats_down_is_store_unavailable_not_a_hang(
    store: EventStore, nats_server: EmbeddedNats, nc: NATS
) -> None:
    await nats_server.stop()
    await eventually(lambda: not nc.is_connected, timeout=5, what="the client saw the server go")
    with pytest.raises(StoreUnavailable):
        await store.append([Outgoing("dispatch.evt.group.v.1", formed(), "x:0", expected_seq=0)])
    with pytest.raises(StoreUnavailable):
        await store.load("dispatch.evt.group.v.1")


async def test_the_same_message_id_with_other_content_is_a_conflict_not_a_success(store: EventStore) -> None:
    subject = "dispatch.evt.call.same"
    ours = CallRouted(at=at(), call_id="c", incident_id="mine", status="raised")
    theirs = CallRouted(at=at(), call_id="c", incident_id="theirs", status="raised")
    batch_of = lambda event: [  # noqa: E731
        Outgoing(subject, event, "call:k:0", expected_seq=0),
        Outgoing("dispatch.evt.incident." + event.incident_id, formed(), "call:k:1", expected_seq=0),
    ]
    stored = await store.append(batch_of(theirs))
    with pytest.raises(AppendConflict):
        await store.append(batch_of(ours))
    assert await store.append(batch_of(theirs)) == stored


@pytest.mark.parametrize(
    "subject",
    [
        "dispatch.evt.*.*",
        "dispatch.evt.>",
        "dispatch.evt.token.*",
        "dispatch.evt.group.v.>",
        "dispatch.evt.group..1",
        "dispatch.evt.group.v 1",
        "dispatch.evt.group.v\x001",
        "dispatch.evt.group.v.1.",
    ],
)
async def test_the_store_refuses_a_wildcard_where_it_expects_one_subject(store: EventStore, subject: str) -> None:
    """Nothing is sent: the log gains nothing and no other subject is read."""
    await store.append([Outgoing("dispatch.evt.group.v.1", formed(), "cmd-w:0", expected_seq=0)])
    before = await store.stream_last_seq()
    with pytest.raises(InvalidSubject):
        await store.append([Outgoing(subject, formed(), "cmd-wild:0")])
    with pytest.raises(InvalidSubject):
        await store.last(subject)
    with pytest.raises(InvalidSubject):
        await store.last_of(["dispatch.evt.group.v.1", subject])
    if subject != "dispatch.evt.*.*":
        with pytest.raises(InvalidSubject):
            await store.load(subject)
    assert await store.stream_last_seq() == before


async def test_the_one_filter_load_takes_is_an_incidents_history(store: EventStore) -> None:
    with pytest.raises(InvalidSubject):
        await store.load("dispatch.evt.*.*")
    with pytest.raises(InvalidSubject):
        await store.load("dispatch.evt.*.>")
    assert await store.load("dispatch.evt.*.0190ab12-3456-7abc-8def-0123456789ab") == []
    assert len(await store.scan("dispatch.evt.>")) == 0
