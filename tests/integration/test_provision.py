"""Provisioning against a real nats-server: the fan-out's push consumer and its take-over from v1."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatch.events.subjects import EVENTS_STREAM, FANOUT_PUSH, INCIDENTS_ALL
from dispatch.store.provision import FANOUT, ConsumerSpec, ensure_consumer, provision
from tests.support import eventually

OLD_FANOUT = ConsumerSpec(EVENTS_STREAM, "fanout_v1", (INCIDENTS_ALL,), ack_wait_s=6)


async def _received_by_queue(nc: NATS, expected: int) -> list[int]:
    got: list[int] = []
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        got.append(msg.metadata.sequence.stream)
        await msg.ack()
        if len(got) == expected:
            done.set()

    sub = await nc.jetstream().subscribe(INCIDENTS_ALL, queue=FANOUT.durable, cb=on_msg, manual_ack=True)
    await asyncio.wait_for(done.wait(), 5)

    async def drained() -> bool:
        info = await nc.jetstream().consumer_info(EVENTS_STREAM, FANOUT.durable)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await eventually(drained, timeout=5, what="the queue delivered and acknowledged all it will")
    await sub.unsubscribe()
    return got


async def test_a_fresh_server_gets_a_push_consumer_with_a_deliver_group(nc: NATS) -> None:
    await provision(nc)
    info = await nc.jetstream().consumer_info(EVENTS_STREAM, FANOUT.durable)
    assert info.config.deliver_subject == FANOUT_PUSH
    assert info.config.deliver_group == FANOUT.durable
    assert info.config.max_ack_pending == FANOUT.max_ack_pending
    js = nc.jetstream()
    seqs = [(await js.publish(f"dispatch.evt.incident.i{k}", b"{}")).seq for k in range(3)]
    assert await _received_by_queue(nc, 3) == seqs


async def test_the_push_consumer_takes_over_where_v1_acknowledged_and_v1_is_removed(nc: NATS) -> None:
    await provision(nc)
    js = nc.jetstream()
    await js.delete_consumer(EVENTS_STREAM, FANOUT.durable)
    await ensure_consumer(nc, OLD_FANOUT)
    seqs = [(await js.publish(f"dispatch.evt.incident.i{k}", b"{}")).seq for k in range(5)]
    old = await js.pull_subscribe_bind(OLD_FANOUT.durable, EVENTS_STREAM)
    for msg in await old.fetch(3, timeout=2):
        await msg.ack_sync()
    await old.unsubscribe()

    await provision(nc)

    consumers = {c.name for c in await js.consumers_info(EVENTS_STREAM)}
    assert OLD_FANOUT.durable not in consumers
    assert FANOUT.durable in consumers
    assert await _received_by_queue(nc, 2) == seqs[3:]


async def test_provisioning_again_keeps_the_push_consumer_and_its_position(nc: NATS) -> None:
    await provision(nc)
    js = nc.jetstream()
    seqs = [(await js.publish(f"dispatch.evt.incident.i{k}", b"{}")).seq for k in range(2)]
    assert await _received_by_queue(nc, 2) == seqs
    await provision(nc)
    info = await js.consumer_info(EVENTS_STREAM, FANOUT.durable)
    assert info.ack_floor.stream_seq == seqs[-1]
    assert info.num_pending == 0
