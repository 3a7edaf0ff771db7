"""Keypad callbacks are recorded only as the number their call rang (issue 26, item 5): the service
in-process on a real nats-server, callbacks over HTTP as the gateway sends them.

A caller's `0` on their own call (inbound) must come with that call's number; a responder's digit on
a call we placed (outbound) must name, in `to`, `context.phone` and `call_ref`, one and the same leg.
Anything else is 403, logged masked, and leaves the incident as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from dispatch.bootstrap import Service
from dispatch.channels.gateway import call_ref
from dispatch.events.model import IncidentCancelled, ResponderAccepted
from dispatch.events.subjects import incident_subject
from tests.rosters import ROSTER
from tests.support import RecordingChannel, eventually, service_client, start_service

CALLER, MEMBER, LEADER, OFFICER = "+8613800000001", "+8613800000002", "+8613800000008", "+8613900000009"


@pytest.fixture
def voice() -> RecordingChannel:
    """Records what the fan-out hands a channel named `voice`: the legs a gateway would ring, keyed
    exactly as the gateway channel keys them."""
    channel = RecordingChannel()
    channel.name = "voice"
    return channel


@pytest.fixture
async def service(tmp_path: Path, voice: RecordingChannel) -> AsyncIterator[Service]:
    svc = await start_service(tmp_path / "data", voice, roster=ROSTER)
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with service_client(service) as client:
        yield client


async def decisions(service: Service, incident_id: str) -> list[Any]:
    return [r.event for r in await service.store.load(incident_subject(incident_id))]


async def raise_alarm(http: httpx.AsyncClient, call_id: str, caller: str) -> str:
    answer = await http.post("/v1/calls", json={"call_id": call_id, "caller": caller})
    assert answer.status_code == 202, answer.text
    incident: str = answer.json()["incident_id"]
    return incident


def inbound(call_id: str, caller: str) -> dict[str, Any]:
    return {
        "call_ref": f"in-{call_id}",
        "direction": "inbound",
        "event": "digits",
        "digits": "0",
        "call_id": call_id,
        "caller": caller,
    }


async def test_a_0_on_the_callers_call_from_any_other_number_cancels_nothing(
    service: Service, http: httpx.AsyncClient
) -> None:
    incident = await raise_alarm(http, "cb-in-1", "13800000001")
    merged = await http.post("/v1/calls", json={"call_id": "cb-in-2", "caller": "13800000002"})
    assert merged.json() == {"incident_id": incident, "status": "merged", "duplicate": False}

    with structlog.testing.capture_logs() as logs:
        for call_id, caller in [
            ("cb-in-1", "13800000002"),  # another member of the group
            ("cb-in-1", "+8613900000009"),  # the officer
            ("cb-in-1", ""),  # no number at all
            ("cb-in-2", "13800000001"),  # the first caller, on the member's call
        ]:
            refused = await http.post("/v1/gateway/voice", json=inbound(call_id, caller))
            assert refused.status_code == 403, (call_id, caller, refused.text)
            assert refused.json()["error"].startswith("caller is not the number that made this call"), refused.text
    assert not any(isinstance(e, IncidentCancelled) for e in await decisions(service, incident))
    assert (await http.get(f"/v1/incidents/{incident}")).json()["status"] != "cancelled"
    mismatches = [e for e in logs if e["event"] == "gateway.number_mismatch"]
    assert len(mismatches) == 4 and {e["field"] for e in mismatches} == {"caller"}
    assert [e["rung"] for e in mismatches] == ["+86138****0001"] * 3 + ["+86138****0002"]
    assert [e["said"] for e in mismatches] == ["+86138****0002", "+86139****0009", "", "+86138****0001"]

    theirs = await http.post("/v1/gateway/voice", json=inbound("cb-in-2", "13800000002"))
    assert theirs.status_code == 200 and theirs.json()["ok"] is False, "a member's 0 is theirs: it cannot cancel"
    assert not any(isinstance(e, IncidentCancelled) for e in await decisions(service, incident))

    cancelled = await http.post("/v1/gateway/voice", json=inbound("cb-in-1", "13800000001"))
    assert cancelled.status_code == 200 and "已取消" in cancelled.json()["say"], cancelled.text
    [closed] = [e for e in await decisions(service, incident) if isinstance(e, IncidentCancelled)]
    assert closed.by == CALLER and closed.reason == "caller_safe"


async def test_a_keypad_answer_counts_only_for_the_leg_its_call_rang(
    service: Service, http: httpx.AsyncClient, voice: RecordingChannel
) -> None:
    incident = await raise_alarm(http, "cb-out-1", "13800000001")

    def rung() -> dict[str, tuple[Any, Any, int]] | None:
        legs = {target.recipient.phone: (job, target, attempt) for _, job, target, attempt in voice.sent}
        return legs if {LEADER, OFFICER} <= set(legs) else None

    legs = await eventually(rung, timeout=6, interval=0.02, what="the alarm ringing the leader and the officer")

    def callback(leg: str, *, to: str | None = None, phone: str | None = None, round_: int | None = None) -> Any:
        job, target, attempt = legs[leg]
        context = {"incident_id": incident, "phone": phone or leg, "round": job.round if round_ is None else round_}
        body = {"call_ref": call_ref(target, attempt), "event": "digits", "digits": "1", "context": context}
        if to != "":
            body["to"] = to or leg
        return http.post("/v1/gateway/voice", json=body)

    forged = {
        "the leader's call, answered as the officer": (callback(LEADER, phone=OFFICER), "to"),
        "the leader's call, answered as the officer in to as well": (
            callback(LEADER, to=OFFICER, phone=OFFICER),
            "call_ref",
        ),
        "the officer's call, said to be the leader's": (callback(OFFICER, to=LEADER), "to"),
        "the officer's call, another round": (callback(OFFICER, round_=legs[OFFICER][0].round + 1), "call_ref"),
        "the officer's call, without to": (callback(OFFICER, to=""), "to"),
    }
    for what, (sent, field) in forged.items():
        refused = await sent
        assert refused.status_code == 403, (what, refused.text)
        assert refused.json()["error"].startswith(field), (what, refused.text)
    assert not any(isinstance(e, ResponderAccepted) for e in await decisions(service, incident))

    as_rung = await callback(OFFICER, to="13900000009")
    assert as_rung.status_code == 200 and as_rung.json()["ok"] is True, as_rung.text
    accepted = [e.phone for e in await decisions(service, incident) if isinstance(e, ResponderAccepted)]
    assert accepted == [OFFICER]
