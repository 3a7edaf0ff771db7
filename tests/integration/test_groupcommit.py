"""Group commit against a real nats-server: appends that wait for a place are stored together, and
each caller is answered exactly as if it had been alone (its sequences, its conflict, its duplicate)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from dispatch.events.model import GroupFormed, MemberBound
from dispatch.events.subjects import TIMERS_STREAM, timer_fired_subject
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing, StoreUnavailable
from dispatch.store.provision import provision
from dispatch.store.server import EmbeddedNats
from dispatch.store.timers import Timers
from tests.support import eventually, paused
from tests.unit.fixtures import at


def formed(group: str) -> GroupFormed:
    return GroupFormed(at=at(), village="v", group=group)


def bound(phone: str, group: str) -> MemberBound:
    return MemberBound(at=at(), village="v", group=group, phone=phone, name="n", role="household")


def subject(group: str) -> str:
    return f"dispatch.evt.group.v.{group}"


@pytest.fixture
async def store(nc: NATS) -> EventStore:
    await provision(nc)
    return EventStore(nc, timeout=2.0, in_flight=1)  # the first append goes alone; the others meanwhile wait


async def test_appends_that_wait_are_stored_together_each_answered_its_own(store: EventStore) -> None:
    async def decide(k: int) -> list[int]:
        messages = [Outgoing(subject(f"g{k}"), formed(f"g{k}"), f"gc-{k}:0", expected_seq=0)]
        if k % 3 == 0:  # some decisions are two events on their subject
            messages.append(Outgoing(subject(f"g{k}"), bound(f"+86138{k:08d}", f"g{k}"), f"gc-{k}:1"))
        return await store.append(messages)

    answers = await asyncio.gather(*(decide(k) for k in range(120)))

    assert store.commit.batches >= 1  # 119 waited behind the first: they went together
    assert store.commit.sending == 0
    for k, seqs in enumerate(answers):
        records = await store.load(subject(f"g{k}"))
        assert [r.seq for r in records] == seqs
        assert [r.msg_id for r in records] == [f"gc-{k}:{i}" for i in range(len(seqs))]
        assert records[0].follows == 0
        if len(records) == 2:
            assert records[1].follows == records[0].seq  # the decision's later message names its previous one
    everything = sorted(seq for seqs in answers for seq in seqs)
    assert everything == list(range(everything[0], everything[0] + 160))


async def test_a_conflict_in_a_combined_batch_is_that_callers_alone(store: EventStore) -> None:
    [first] = await store.append([Outgoing(subject("taken"), formed("taken"), "taken:0", expected_seq=0)])
    blocker = asyncio.ensure_future(store.append([Outgoing(subject("blocker"), formed("blocker"), "b:0")]))
    await asyncio.sleep(0)  # the blocker holds the one place: the rest wait and go together

    async def fresh(k: int) -> list[int]:
        return await store.append([Outgoing(subject(f"f{k}"), formed(f"f{k}"), f"f{k}:0", expected_seq=0)])

    stale = store.append([Outgoing(subject("taken"), formed("taken"), "stale:0", expected_seq=first - 1)])
    results = await asyncio.gather(blocker, stale, *(fresh(k) for k in range(20)), return_exceptions=True)

    assert isinstance(results[1], AppendConflict)
    assert store.commit.batches >= 1
    for k, seqs in enumerate(results[2:]):
        assert isinstance(seqs, list), seqs
        assert [r.seq for r in await store.load(subject(f"f{k}"))] == seqs
    assert [r.msg_id for r in await store.load(subject("taken"))] == ["taken:0"]


async def test_a_retried_append_in_a_combined_batch_gets_its_stored_sequences(store: EventStore) -> None:
    retried = [Outgoing(subject("r"), formed("r"), "r:0", expected_seq=0)]
    stored = await store.append(retried)
    blocker = asyncio.ensure_future(store.append([Outgoing(subject("blocker"), formed("blocker"), "b:0")]))
    await asyncio.sleep(0)

    async def fresh(k: int) -> list[int]:
        return await store.append([Outgoing(subject(f"n{k}"), formed(f"n{k}"), f"n{k}:0", expected_seq=0)])

    again, *others = await asyncio.gather(store.append(retried), *(fresh(k) for k in range(10)))
    await blocker

    assert again == stored
    assert len(await store.load(subject("r"))) == 1
    for k, seqs in enumerate(others):
        assert [r.seq for r in await store.load(subject(f"n{k}"))] == seqs


async def test_two_decisions_on_one_subject_never_share_a_batch(store: EventStore) -> None:
    [seq] = await store.append([Outgoing(subject("one"), formed("one"), "one:0", expected_seq=0)])
    blocker = asyncio.ensure_future(store.append([Outgoing(subject("blocker"), formed("blocker"), "b:0")]))
    await asyncio.sleep(0)

    def decision(name: str) -> list[Outgoing]:
        return [Outgoing(subject("one"), bound("+8613800000001", "one"), f"{name}:0", expected_seq=seq)]

    a, b, fact = await asyncio.gather(
        store.append(decision("a")),
        store.append(decision("b")),
        store.append([Outgoing(subject("one"), bound("+8613800000002", "one"), "fact:0")]),
        return_exceptions=True,
    )
    await blocker

    assert isinstance(a, list) and isinstance(b, AppendConflict)  # as when each is alone: the first wins
    assert isinstance(fact, list)
    assert [r.msg_id for r in await store.load(subject("one"))] == ["one:0", "a:0", "fact:0"]
    assert store.commit.batches == 0, "all three are on one subject: each went alone, in order"


async def test_a_paused_server_fails_every_waiting_caller_and_their_retries_store_each_once(
    nats_server: EmbeddedNats, nc: NATS
) -> None:
    await provision(nc)
    store = EventStore(nc, timeout=0.5, in_flight=1)
    assert nats_server.pid is not None
    batches = [[Outgoing(subject(f"p{k}"), formed(f"p{k}"), f"p{k}:0", expected_seq=0)] for k in range(15)]
    async with paused(nats_server.pid):
        failed = await asyncio.gather(*(store.append(b) for b in batches), return_exceptions=True)
    assert all(isinstance(f, StoreUnavailable) for f in failed), failed
    assert store.commit.batches >= 1  # the ones that waited went together, and failed together

    store.timeout = store.commit.timeout = 5.0
    retried = await asyncio.gather(*(store.append(b) for b in batches))  # the same message ids
    for k, seqs in enumerate(retried):
        records = await store.load(subject(f"p{k}"))
        assert [r.seq for r in records] == seqs and len(records) == 1


async def test_schedules_set_together_each_fire(nc: NATS) -> None:
    await provision(nc)
    timers = Timers(nc)
    timers.commit.in_flight = 1
    due = datetime.now(UTC) + timedelta(seconds=1)
    await asyncio.gather(*(timers.schedule(f"i{k}", "ack", due) for k in range(30)))
    assert timers.commit.batches >= 1
    js = nc.jetstream()

    async def fired(k: int) -> bool:
        try:
            await js.get_last_msg(TIMERS_STREAM, timer_fired_subject(f"i{k}", "ack"))
        except NotFoundError:
            return False
        return True

    for k in range(30):
        await eventually(lambda k=k: fired(k), timeout=15)


async def test_any_mix_of_waiting_decisions_and_facts_keeps_every_expectation(store: EventStore) -> None:
    """Randomised (fixed seeds): callers of one to three messages on a few shared subjects, some with
    the subject's expected sequence as they last saw it (fresh or stale), all waiting behind one
    place. Whatever went together: each caller is stored whole or refused whole, a stored decision's
    first message follows exactly the sequence it expected, a refused one left nothing, and what the
    callers were answered is what the log holds."""
    for seed in range(20):
        rng = random.Random(seed)
        names = [f"r{seed}s{k}" for k in range(rng.randint(2, 5))]
        seen: dict[str, int] = {}
        for name in names:  # each subject starts with one message
            [seen[name]] = await store.append([Outgoing(subject(name), formed(name), f"{name}:init", expected_seq=0)])
        callers: list[list[Outgoing]] = []
        for c in range(rng.randint(2, 30)):
            name = rng.choice(names)
            expected = None if rng.random() < 0.3 else seen[name] - (1 if rng.random() < 0.2 else 0)
            messages = [
                Outgoing(subject(name), bound(f"+86137{c:08d}", name), f"{name}:c{c}:{i}", expected_seq=expected)
                for i in range(rng.randint(1, 3))
            ]
            callers.append(messages)
        blocker = asyncio.ensure_future(store.append([Outgoing(subject(f"b{seed}"), formed("b"), f"b{seed}:0")]))
        await asyncio.sleep(0)
        answers = await asyncio.gather(*(store.append(m) for m in callers), return_exceptions=True)
        await blocker

        held = {name: await store.load(subject(name)) for name in names}
        by_id = {r.msg_id: r for records in held.values() for r in records}
        for messages, answer in zip(callers, answers, strict=True):
            ids = [m.msg_id for m in messages]
            if isinstance(answer, AppendConflict):
                assert messages[0].expected_seq is not None, f"seed {seed}: a fact was refused with others"
                assert not any(i in by_id for i in ids), f"seed {seed}: a refused caller left {ids}"
                continue
            assert isinstance(answer, list), f"seed {seed}: {answer!r}"
            assert [by_id[i].seq for i in ids] == answer, f"seed {seed}: answered other sequences"
            records = held[messages[0].subject.rsplit(".", 1)[1]]
            first = next(k for k, r in enumerate(records) if r.msg_id == ids[0])
            assert [r.msg_id for r in records[first : first + len(ids)]] == ids, f"seed {seed}: split"
            if messages[0].expected_seq is not None:
                assert records[first - 1].seq == messages[0].expected_seq, f"seed {seed}: expectation broken"
        assert store.commit.sending == 0
    assert store.commit.batches >= 20
