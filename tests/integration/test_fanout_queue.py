"""The fan-out's subscription (real nats-server): a new alarm is rung at once while more escalations
wait than the pool rings at once, and every waiting trigger is still rung, each once, as places free."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from nats.aio.client import Client as NATS

from dispatch.bootstrap import alarm_by_headers
from dispatch.events.codec import encode, event_headers
from dispatch.events.model import AlarmRaised, Event, IncidentEscalated, Person
from dispatch.events.subjects import EVENTS_STREAM, incident_subject
from dispatch.handlers.bus import MessageBus
from dispatch.handlers.messages import Trigger
from dispatch.handlers.pool import TaskPool
from dispatch.handlers.subscribers import bind_raw, build_broker
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


async def test_an_alarm_is_rung_past_a_full_pool_of_escalations_and_each_waiting_one_rings_once(
    nats_server: EmbeddedNats, nc: NATS
) -> None:
    await provision(nc)
    gate = asyncio.Event()
    rung: list[str] = []
    alarm_rung = asyncio.Event()

    async def ring(trigger: Trigger) -> int:
        event = trigger.record.event
        rung.append(event.incident_id)  # type: ignore[attr-defined]
        if isinstance(event, AlarmRaised):
            alarm_rung.set()
        else:
            await gate.wait()  # the receiver is slow: every place stays taken
        return 1

    bus = MessageBus()
    bus.register(Trigger, ring)
    pool = TaskPool(2, "fanout")
    raw: list = []  # type: ignore[type-arg]
    broker = build_broker(
        [nats_server.url],
        bus=bus,
        channels=[],
        pools={"fanout": pool},
        raw=raw,
        urgent=alarm_by_headers,
        connect={"security": nats_server.auth.broker_security()},
    )
    await broker.start()
    try:
        await bind_raw(broker, raw)
        js = nc.jetstream()
        stored: list[Event] = [escalated(i) for i in range(6)] + [alarm()]
        for event in stored:
            await js.publish(incident_subject(event.incident_id), encode(event), headers=event_headers(event))

        await asyncio.wait_for(alarm_rung.wait(), 15)  # with both places held and four escalations waiting
        assert rung == ["esc-0", "esc-1", "alarm-1"] and pool.queued == 4

        gate.set()
        await eventually(lambda: len(rung) == len(stored), what="the waiting escalations were not rung")
        await eventually(lambda: consumers_idle(nc, (EVENTS_STREAM,)), what="the fan-out left triggers unacked")
        assert sorted(rung) == sorted(e.incident_id for e in stored)  # type: ignore[attr-defined]
        info = await js.consumer_info(EVENTS_STREAM, FANOUT.durable)
        assert info.num_redelivered == 0
    finally:
        gate.set()
        await broker.stop()
        await pool.drain()
