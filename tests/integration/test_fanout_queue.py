"""The fan-out's subscription (real nats-server): a new alarm is rung at once while more escalations
wait than the pool rings at once, and every waiting trigger is still rung, each once, as places free."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS

from dispatch.bootstrap import alarm_by_headers
from dispatch.events.codec import encode, event_headers
from dispatch.events.model import AlarmRaised, IncidentEscalated, IncidentEvent, Person
from dispatch.events.subjects import EVENTS_STREAM, incident_subject
from dispatch.handlers.bus import MessageBus
from dispatch.handlers.messages import Trigger
from dispatch.handlers.pool import TaskPool
from dispatch.handlers.subscribers import RawPush, bind_raw, build_broker
from dispatch.store.provision import FANOUT, provision
from dispatch.store.server import EmbeddedNats
from tests.support import consumers_idle, eventually

AT = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)
OFFICER = Person(phone="+8613800000003", name="王警官", role="officer")


def escalated(i: int) -> IncidentEscalated:
    return IncidentEscalated(at=AT, incident_id=f"esc-{i}", tier=1, reason="ack_deadline", alerted=(OFFICER,))


def alarm() -> AlarmRaised:
    caller = Person(phone="+8613800000001", name="张三", role="household")
    return AlarmRaised(
        at=AT,
        incident_id="alarm-1",
        line="group.dongshan.1",
        epoch=1,
        village="dongshan",
        group="1",
        caller=caller,
        call_id="c1",
        channel="voice",
        callee="6995",
        called_at=AT,
        recipients=(OFFICER,),
        duty_desks=(),
        quorum=(("officer",),),
    )


def incident_of(trigger: Trigger) -> str:
    event = trigger.record.event
    assert isinstance(event, IncidentEvent)
    return event.incident_id


async def fanout(server: EmbeddedNats, ring: Callable[[Trigger], Awaitable[int]], pool: TaskPool) -> NatsBroker:
    """A process's fan-out subscription alone, ringing with `ring` in `pool`, bound and started."""
    bus = MessageBus()
    bus.register(Trigger, ring)
    raw: list[RawPush] = []
    broker = build_broker(
        [server.url],
        bus=bus,
        channels=[],
        pools={"fanout": pool},
        raw=raw,
        urgent=alarm_by_headers,
        connect={"security": server.auth.broker_security()},
    )
    await broker.start()
    await bind_raw(broker, raw)
    return broker


async def store(nc: NATS, events: list[IncidentEvent]) -> None:
    js = nc.jetstream()
    for event in events:
        await js.publish(incident_subject(event.incident_id), encode(event), headers=event_headers(event))


async def test_an_alarm_is_rung_past_a_full_pool_of_escalations_and_each_waiting_one_rings_once(
    nats_server: EmbeddedNats, nc: NATS
) -> None:
    await provision(nc)
    gate = asyncio.Event()
    rung: list[str] = []
    alarm_rung = asyncio.Event()

    async def ring(trigger: Trigger) -> int:
        event = trigger.record.event
        rung.append(incident_of(trigger))
        if isinstance(event, AlarmRaised):
            alarm_rung.set()
        else:
            await gate.wait()  # the receiver is slow: every place stays taken
        return 1

    pool = TaskPool(2, "fanout")
    broker = await fanout(nats_server, ring, pool)
    try:
        stored: list[IncidentEvent] = [escalated(i) for i in range(6)] + [alarm()]
        await store(nc, stored)

        await asyncio.wait_for(alarm_rung.wait(), 15)  # with both places held and four escalations waiting
        assert rung == ["esc-0", "esc-1", "alarm-1"] and pool.queued == 4

        gate.set()
        await eventually(lambda: len(rung) == len(stored), what="the waiting escalations were not rung")
        await eventually(lambda: consumers_idle(nc, (EVENTS_STREAM,)), what="the fan-out left triggers unacked")
        assert sorted(rung) == sorted(e.incident_id for e in stored)
        info = await nc.jetstream().consumer_info(EVENTS_STREAM, FANOUT.durable)
        assert info.num_redelivered == 0
    finally:
        gate.set()
        await broker.stop()
        await pool.drain()


async def test_triggers_queued_in_a_process_that_stops_are_rung_by_another(nats_server: EmbeddedNats, nc: NATS) -> None:
    """A process stops (its running rings cut short, its queue dropped unacknowledged): the server
    hands every one of those triggers to the next process once their ack wait runs out."""
    await provision(nc)
    stuck = asyncio.Event()  # never set: the first process's receiver never answers
    first: list[str] = []
    second: list[str] = []

    async def hangs(trigger: Trigger) -> int:
        first.append(incident_of(trigger))
        await stuck.wait()
        return 1

    async def rings(trigger: Trigger) -> int:
        second.append(incident_of(trigger))
        return 1

    stored: list[IncidentEvent] = [escalated(i) for i in range(6)]
    pool = TaskPool(2, "fanout")
    broker = await fanout(nats_server, hangs, pool)
    try:
        await store(nc, stored)
        await eventually(lambda: pool.running == 2 and pool.queued == 4, what="the first process did not queue")
    finally:
        await broker.stop()
        await pool.drain(timeout=0.1)
    assert first == ["esc-0", "esc-1"] and pool.queued == 0

    other = TaskPool(2, "fanout")
    broker = await fanout(nats_server, rings, other)
    try:
        await eventually(
            lambda: sorted(set(second)) == sorted(e.incident_id for e in stored),
            timeout=30,
            what="a trigger queued in the stopped process was never rung",
        )
        await eventually(lambda: consumers_idle(nc, (EVENTS_STREAM,)), what="the fan-out left triggers unacked")
    finally:
        await broker.stop()
        await other.drain()
