"""Malformed messages on every NATS ingress subject: each is copied to `dispatch.dead.<source>` (kept by
the DISPATCH_DEAD stream) with a log line, and its subscriber goes on with the next message."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import structlog
from nats.aio.client import Client as NATS

from dispatch.bootstrap import Service
from dispatch.channels.base import Transient
from dispatch.channels.gateway import CALLBACK_SUBJECT, CallbackBus, VoiceEvent
from dispatch.events.model import IncidentEscalated
from dispatch.events.subjects import DEAD_LETTER_STREAM, incident_subject
from dispatch.settings import Settings
from dispatch.store.provision import dead_letter_stream, ensure_stream
from dispatch.store.server import free_port
from tests.rosters import ROSTER
from tests.support import RecordingChannel, eventually


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Service, RecordingChannel, NATS, list[Any]]]:
    channel = RecordingChannel()
    settings = Settings(
        data_dir=tmp_path / "data",
        http=f"127.0.0.1:{free_port()}",
        delivery_backoff_base=0.05,
        duty_desk="+8673184512345",
        ack_deadline_s=1.0,
    )
    service = Service(settings, channels=[channel])
    await service.start()
    import httpx

    async with httpx.AsyncClient(
        base_url=settings.base_url, headers={"Authorization": f"Bearer {service.admin_token}"}
    ) as http:
        assert (
            await http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
        ).status_code == 200
    nc = await nats.connect(service.nats_urls, **service.nats_auth.connect_kwargs())
    dead: list[Any] = []

    async def collect(msg: Any) -> None:
        dead.append(msg)

    await nc.subscribe("dispatch.dead.>", cb=collect)
    try:
        yield service, channel, nc, dead
    finally:
        await nc.close()
        await service.stop()


async def test_every_ingress_subscriber_dead_letters_garbage_and_keeps_going(
    world: tuple[Service, RecordingChannel, NATS, list[Any]],
) -> None:
    service, channel, nc, dead = world
    js = nc.jetstream()
    with structlog.testing.capture_logs() as logs:
        bad_call = await nc.request("dispatch.ingress.call", json.dumps({"call_id": "x" * 500, "caller": "1"}).encode())
        assert "invalid call" in json.loads(bad_call.data)["error"]
        await js.publish("dispatch.evt.incident.junk-1", b"\x00\xff not json")
        await js.publish(
            "dispatch.evt.incident.junk-2", b'{"nonsense": true}', headers={"Dispatch-Type": "AlarmRaised"}
        )
        await js.publish("dispatch.deliver.test", b"[1, 2, 3]")
        await js.publish("dispatch.timer.incident.junk.ack", b'{"incident_id": 7}')
        await eventually(lambda: len(dead) >= 5)

        sources = sorted(m.subject for m in dead)
        assert sources == [
            "dispatch.dead.deliver.test",
            "dispatch.dead.fanout",
            "dispatch.dead.fanout",
            "dispatch.dead.ingress.call",
            "dispatch.dead.timers",
        ], sources
        for msg in dead:
            assert msg.headers["Dispatch-Dead-Reason"] and msg.headers["Dispatch-Dead-Subject"]

        channel.plan["+8613800000002"] = [Transient("HTTP 503")]
        reply = await nc.request(
            "dispatch.ingress.call", json.dumps({"call_id": "after-junk", "caller": "13800000001"}).encode(), timeout=10
        )
        incident = json.loads(reply.data)["incident_id"]
        await eventually(lambda: len(channel.for_incident(incident)) >= 10)
        retried = [t for t in channel.for_incident(incident) if t.recipient.phone == "+8613800000002"]
        assert len(retried) == 2, "the delivery consumer stopped after a bad job: the retry never came"

        async def escalated() -> bool:
            history = await service.store.load(incident_subject(incident))
            return any(isinstance(r.event, IncidentEscalated) for r in history)

        await eventually(escalated, what="the timers consumer stopped after a bad timer: the ack deadline never fired")

    lines = [entry for entry in logs if entry["event"] == "dead_letter"]
    assert sorted(entry["source"] for entry in lines) == ["deliver.test", "fanout", "fanout", "ingress.call", "timers"]
    info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{DEAD_LETTER_STREAM}", b"")).data)
    assert info["state"]["messages"] == 5, "the dead letters are kept for the operator"


async def test_the_gateway_callback_bus_dead_letters_garbage_and_keeps_listening(nc: NATS) -> None:
    await ensure_stream(nc, dead_letter_stream(1))
    bus = CallbackBus(nc)
    await bus.start()
    dead: list[Any] = []

    async def collect(msg: Any) -> None:
        dead.append(msg)

    await nc.subscribe("dispatch.dead.>", cb=collect)
    try:
        with structlog.testing.capture_logs() as logs:
            await nc.publish(f"{CALLBACK_SUBJECT}.ref-1", b"{broken")
            await nc.publish(f"{CALLBACK_SUBJECT}.ref-1", b'{"call_ref": "ref-1", "event": 3}')
            waiting = bus.expect("ref-2")
            await bus.publish(VoiceEvent(call_ref="ref-2", event="answered"))
            answered = await asyncio.wait_for(waiting, 5)
        assert answered.event == "answered", "the bus stopped listening after garbage"
        await eventually(lambda: len(dead) >= 2)
        assert {m.subject for m in dead} == {"dispatch.dead.gateway.voice"}
        assert [e["source"] for e in logs if e["event"] == "dead_letter"] == ["gateway.voice", "gateway.voice"]
    finally:
        await bus.stop()
