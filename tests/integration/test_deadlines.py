"""Deadlines on a real nats-server: raising sets the ack deadline; the escalate deadline follows from it
only for an incident still uncovered when the ack deadline passes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from dispatch.bootstrap import Service
from dispatch.events.subjects import SCHEDULES_ALL, TIMERS_STREAM, schedule_subject, timer_fired_subject
from dispatch.store.eventstore import StoreUnavailable
from dispatch.store.provision import provision
from dispatch.store.timers import Timers
from tests.rosters import ROSTER
from tests.support import RecordingChannel, answer_as, eventually, service_client, start_service

OFFICER, LEADER = "+8613900000009", "+8613800000008"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    svc = await start_service(
        tmp_path / "data", RecordingChannel(), roster=ROSTER, ack_deadline_s=2.0, escalate_after_s=3.0
    )
    try:
        yield svc
    finally:
        await svc.stop()


async def stored(svc: Service, subject: str) -> bool:
    try:
        await svc.nc.jetstream().get_last_msg(TIMERS_STREAM, subject)
    except NotFoundError:
        return False
    return True


async def tiers(http: httpx.AsyncClient, incident: str) -> list[int]:
    view = (await http.get(f"/v1/incidents/{incident}")).json()
    return [e["detail"]["tier"] for e in view["timeline"] if e["type"] == "IncidentEscalated"]


async def test_the_escalate_deadline_is_set_by_an_ack_deadline_passing_uncovered_and_only_then(
    service: Service,
) -> None:
    async with service_client(service) as http:
        covered = (await http.post("/v1/calls", json={"call_id": "cov-1", "caller": "13800000001"})).json()
        uncovered = (await http.post("/v1/calls", json={"call_id": "unc-1", "caller": "13800000011"})).json()
        covered_id, uncovered_id = covered["incident_id"], uncovered["incident_id"]
        assert not await stored(service, schedule_subject(uncovered_id, "escalate")), "set at raise, not at ack"
        for who in (OFFICER, LEADER):
            r = await answer_as(service, http, covered_id, who, "accept")
            assert r.status_code == 200, r.text
        assert (await http.get(f"/v1/incidents/{covered_id}")).json()["status"] == "acknowledged"

        async def uncovered_reached_tier_two() -> bool:
            return await tiers(http, uncovered_id) == [1, 2]

        await eventually(uncovered_reached_tier_two, timeout=15, what="the uncovered incident at tier 2")
        assert await tiers(http, uncovered_id) == [1, 2], "the uncovered incident reached no tier 2"
        assert await stored(service, timer_fired_subject(uncovered_id, "escalate"))
        assert await stored(service, timer_fired_subject(covered_id, "ack")), "the covered one's ack deadline fired"
        assert not await stored(service, schedule_subject(covered_id, "escalate"))
        assert not await stored(service, timer_fired_subject(covered_id, "escalate"))
        assert await tiers(http, covered_id) == []


async def test_an_escalate_deadline_that_cannot_be_stored_comes_back_with_its_ack_timer(service: Service) -> None:
    timers = service.escalation.timers
    schedule = timers.schedule
    refused: list[str] = []

    async def once_unreachable(incident_id: str, timer: str, due: datetime) -> None:
        if timer == "escalate" and not refused:
            refused.append(incident_id)
            raise StoreUnavailable("timers unavailable: test")
        await schedule(incident_id, timer, due)

    timers.schedule = once_unreachable  # type: ignore[method-assign]
    async with service_client(service) as http:
        raised = (await http.post("/v1/calls", json={"call_id": "refused-1", "caller": "13800000011"})).json()
        incident = raised["incident_id"]

        async def reached_tier_two() -> bool:
            return await tiers(http, incident) == [1, 2]

        await eventually(reached_tier_two, timeout=20, what="tier 2 after a refused escalate deadline")
        assert refused == [incident], "the escalate deadline was never refused"
        assert await tiers(http, incident) == [1, 2], "a refused escalate deadline lost tier 2"


class Vanishing:
    """A timers reader whose schedules fire (leave the stream) right after it counted them."""

    def __init__(self, reader: Any, js: Any, seqs: list[int]) -> None:
        self.reader, self.js, self.seqs = reader, js, seqs
        self.fetches = self.counts = 0

    async def consumer_info(self) -> Any:
        self.counts += 1
        info = await self.reader.consumer_info()
        while self.seqs:
            await self.js.delete_msg(TIMERS_STREAM, self.seqs.pop())
        return info

    async def fetch(self, batch: int, timeout: float) -> Any:
        self.fetches += 1
        return await self.reader.fetch(batch, timeout=timeout)


@pytest.mark.parametrize("fired", [2, 5])
async def test_schedules_that_fire_while_a_restart_reads_them_end_the_read(nc: NATS, fired: int) -> None:
    """The server counted five pending schedules, then `fired` of them left the stream: the read
    ends with the others, in one fetch (not a wait for the vanished ones, then a second read)."""
    await provision(nc)
    timers = Timers(nc)
    later = datetime.now(UTC) + timedelta(hours=1)
    for n in range(5):
        await timers.schedule(f"inc-{n}", "ack", later + timedelta(seconds=n))
    js = nc.jetstream()
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
    reader = await js.pull_subscribe(SCHEDULES_ALL, stream=TIMERS_STREAM, config=config)
    info = await js.stream_info(TIMERS_STREAM)
    seqs = list(range(info.state.last_seq - fired + 1, info.state.last_seq + 1))
    vanishing = Vanishing(reader, js, seqs)
    found = await timers._drain(vanishing, 100)
    assert sorted(d.incident_id for d in found) == [f"inc-{n}" for n in range(5 - fired)]
    assert vanishing.fetches == 1, "it fetched again for schedules no longer there"
    await reader.unsubscribe()
