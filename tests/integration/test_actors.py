"""Who did what, over HTTP on a real service: a token carries its person's number, an answer for
anyone else is a proxy answer and says so (incident view, timeline, history export, reports), one
token never covers an incident on its own, and a relaxed cover is told from a full one."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatch.bootstrap import Service
from dispatch.events.model import ResponderAccepted, TokenIssued, VillageSettingsChanged
from dispatch.events.subjects import incident_subject
from tests.rosters import ROSTER
from tests.support import RecordingChannel, answer_as, eventually, service_client, start_service

OFFICER, LEADER, ASSISTANT, SECOND_LEADER = "+8613900000009", "+8613800000008", "+8613900000001", "+8613800000018"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    svc = await start_service(tmp_path / "data", RecordingChannel(), roster=ROSTER)
    try:
        yield svc
    finally:
        await svc.stop()


async def issue(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await http.post("/v1/tokens", json=body)
    assert r.status_code == 201, r.text
    issued: dict[str, Any] = r.json()
    return issued


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_answer(
    http: httpx.AsyncClient, token: str, incident: str, action: str, responder: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"action": action}
    if responder is not None:
        body["responder"] = responder
    r = await http.post(f"/v1/incidents/{incident}/responses", json=body, headers=as_(token))
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_one_officer_token_accepting_for_the_leader_then_itself_does_not_cover(service: Service) -> None:
    async with service_client(service) as http:
        officer = await issue(http, name="吴建军", role="officer", villages=["dongshan"], phone="139 0000 0009")
        assert officer["phone"] == OFFICER
        me = (await http.get("/v1/me", headers=as_(officer["token"]))).json()
        assert me["phone"] == OFFICER, "the console's 我的号码 comes from the token"
        issued = [r.event for r in await service.store.scan("dispatch.evt.token.>") if isinstance(r.event, TokenIssued)]
        mine = next(e for e in issued if e.token_id == officer["token_id"])
        assert mine.actor is not None and mine.actor.token_id == "admin0", "a token act names who issued it"

        incident = (await http.post("/v1/calls", json={"call_id": "a-1", "caller": "13800000001"})).json()[
            "incident_id"
        ]
        for_leader = await post_answer(http, officer["token"], incident, "accept", responder=LEADER)
        assert for_leader["proxy"] is True and for_leader["covered"] is False
        own = await post_answer(http, officer["token"], incident, "accept")  # no responder: the token's own number
        assert own["recorded"] == ["ResponderAccepted"] and own["proxy"] is False
        assert own["covered"] is False, "one officer token met both halves of the quorum"

        view = (await http.get(f"/v1/incidents/{incident}")).json()
        assert view["covered"] is False and view["cover"] is None
        leader = next(r for r in view["responders"] if r["phone"] == LEADER)
        assert leader["accepted_proxy"] is True and leader["accepted_actor"]["name"] == "吴建军"
        assert leader["accepted_actor"]["token_id"] == officer["token_id"]
        accepted = [e for e in view["timeline"] if e["type"] == "ResponderAccepted"]
        assert accepted[0]["proxy"] is True and "由吴建军代为登记" in accepted[0]["text"]
        assert accepted[1]["proxy"] is False and accepted[1]["actor"]["channel"] == "api"

        # the leader then answers from their own phone (a text): a second person, covered
        sms = await http.post("/v1/gateway/sms", json={"message_id": "s-1", "from": "13800000008", "text": "接"})
        assert sms.status_code == 200, sms.text
        view = (await http.get(f"/v1/incidents/{incident}")).json()
        assert view["covered"] is True and view["cover"] == {"kind": "full", "relaxed": [], "by_proxy": False}
        last = [e for e in view["timeline"] if e["type"] == "ResponderAccepted"][-1]
        assert last["actor"]["channel"] == "sms" and last["actor"]["phone"] == LEADER and not last["proxy"]
        stored = [r.event for r in await service.store.load(incident_subject(incident))]
        assert all(e.actor is not None for e in stored if isinstance(e, ResponderAccepted)), "an act without actor"


async def test_reports_and_export_split_own_from_proxy_and_relaxed_from_full(service: Service) -> None:
    async with service_client(service) as http:
        desk = await issue(http, name="城关所值班室", role="duty_desk", station="0731-84512345")
        # incident 1: the duty desk takes the leader's answer by phone, the officer presses accept himself
        first = (await http.post("/v1/calls", json={"call_id": "r-1", "caller": "13800000001"})).json()["incident_id"]
        await post_answer(http, desk["token"], first, "accept", responder=LEADER)
        r = await answer_as(service, http, first, OFFICER, "accept")
        assert r.json()["covered"] is True
        assert (await http.get(f"/v1/incidents/{first}")).json()["cover"]["by_proxy"] is True
        # incident 2: group 2's leader calls, the group has no assistant: the officer's accept alone covers
        second = (await http.post("/v1/calls", json={"call_id": "r-2", "caller": "13800000018"})).json()["incident_id"]
        r = await answer_as(service, http, second, OFFICER, "accept")
        assert r.json()["covered"] is True
        view = (await http.get(f"/v1/incidents/{second}")).json()
        assert view["cover"] == {"kind": "relaxed", "relaxed": [["leader", "assistant"]], "by_proxy": False}
        covered = next(e for e in view["timeline"] if e["type"] == "IncidentCovered")
        assert "组长为报警人，民警接警即覆盖" in covered["text"] and "均已接警" not in covered["text"]

        async def projected() -> dict[str, Any] | None:
            report: dict[str, Any] = (await http.get("/v1/reports/response-times")).json()
            return report if report.get("covered") == 2 else None

        report = await eventually(projected, what="both covers in the read model")
        assert report["covered_full"] == 1 and report["covered_relaxed"] == 1
        assert report["covered_by_proxy"] == 1
        assert report["own_accepts"] == 2 and report["proxy_accepts"] == 1

        exported = (await http.get("/v1/reports/history", params={"format": "csv"})).text.lstrip("\ufeff")
        rows = {row["incident_id"]: row for row in csv.DictReader(io.StringIO(exported, newline=""))}
        assert rows[first]["proxy_by"] == "城关所值班室" and rows[first]["covered_by_proxy"] == "1"
        assert rows[first]["cover_kind"] == "full" and rows[second]["cover_kind"] == "relaxed"
        assert rows[second]["own_accepts"] == "1" and rows[second]["proxy_accepts"] == "0"


async def test_a_village_that_does_not_count_proxy_answers(service: Service) -> None:
    async with service_client(service) as http:
        r = await http.put("/v1/villages/dongshan/settings", json={"proxy_counts": False})
        assert r.status_code == 200 and r.json()["proxy_counts"] is False, r.text
        changed = [
            rec.event
            for rec in await service.store.scan("dispatch.evt.village.>")
            if isinstance(rec.event, VillageSettingsChanged)
        ]
        assert changed[-1].actor is not None and changed[-1].actor.name == "bootstrap admin"
        desk = await issue(http, name="城关所值班室", role="duty_desk", station="0731-84512345")
        incident = (await http.post("/v1/calls", json={"call_id": "p-1", "caller": "13800000001"})).json()[
            "incident_id"
        ]
        await post_answer(http, desk["token"], incident, "accept", responder=ASSISTANT)
        r = await answer_as(service, http, incident, OFFICER, "accept")
        assert r.json()["covered"] is False, "a proxy answer counted where the village said it does not"
        r = await answer_as(service, http, incident, ASSISTANT, "accept")
        assert r.json()["recorded"] == ["ResponderAccepted", "IncidentCovered"], "the assistant's own accept"
