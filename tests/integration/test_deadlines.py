"""Deadlines on a real nats-server: raising sets the ack deadline; the escalate deadline follows from it
only for an incident still uncovered when the ack deadline passes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from nats.js.errors import NotFoundError

from dispatch.bootstrap import Service
from dispatch.events.subjects import TIMERS_STREAM, schedule_subject, timer_fired_subject
from dispatch.store.eventstore import StoreUnavailable
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
