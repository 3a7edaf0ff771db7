"""Absences over HTTP on a real service (embedded nats-server, SQLite read models, loopback HTTP): the
act recorded with its actor in the log and the audit trail, an officer limited to its villages, the
substitute rung in the officer's place and counted for cover, readiness showing a group left short,
and an early end ringing the officer again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatch.bootstrap import Service
from dispatch.events.model import AbsenceEnded, AbsenceSet
from dispatch.events.subjects import MEMBERS_ALL
from tests.rosters import ROSTER, combined, csv
from tests.support import RecordingChannel, answer_as, eventually, service_client, start_service

OFFICER, LEADER, ASSISTANT = "+8613900000009", "+8613800000008", "+8613900000001"
NEIGHBOUR = "+8613700000099"  # xishan's officer lends a hand
ROSTERS = combined(
    ROSTER, csv([("xishan", 1, "13700000099", "officer", "钱警官"), ("xishan", 1, "13700000098", "leader", "孙组长")])
)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Service, RecordingChannel]]:
    channel = RecordingChannel()
    svc = await start_service(tmp_path / "data", channel, roster=ROSTERS)
    try:
        yield svc, channel
    finally:
        await svc.stop()


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hours(n: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=n)).isoformat()


async def rung(svc: Service, channel: RecordingChannel, http: httpx.AsyncClient, call_id: str) -> tuple[str, set[str]]:
    r = await http.post("/v1/calls", json={"call_id": call_id, "caller": "13800000001"})
    assert r.status_code == 202, r.text
    incident = str(r.json()["incident_id"])
    await eventually(lambda: channel.for_incident(incident), what="the alarm handed to the channel")
    return incident, {t.recipient.phone for t in channel.for_incident(incident)}


async def test_an_officer_on_leave_is_replaced_by_the_substitute_who_counts_for_cover(
    service: tuple[Service, RecordingChannel],
) -> None:
    svc, channel = service
    async with service_client(svc) as http:
        officer = (
            await http.post(
                "/v1/tokens", json={"name": "吴建军", "role": "officer", "villages": ["dongshan"], "phone": OFFICER}
            )
        ).json()
        r = await http.put(
            f"/v1/members/{OFFICER}/absence",
            json={"until": hours(8), "substitute": "137 0000 0099", "note": "年假"},
            headers={**as_(officer["token"]), "X-Dispatch-Client": "console"},
        )
        assert r.status_code == 200, r.text
        shown = r.json()
        assert shown["absence"]["absent_now"] is True
        assert shown["absence"]["substitute"] == NEIGHBOUR and shown["absence"]["substitute_name"] == "钱警官"
        assert shown["absence"]["set_by"]["name"] == "吴建军"
        stored = [r.event for r in await svc.store.scan(MEMBERS_ALL)]
        assert len(stored) == 1 and isinstance(stored[0], AbsenceSet)
        assert stored[0].actor is not None and stored[0].actor.token_id == officer["token_id"]
        assert stored[0].actor.channel == "console"
        again = await http.put(
            f"/v1/members/{OFFICER}/absence",
            json={"from": shown["absence"]["from"], "until": shown["absence"]["until"], "substitute": NEIGHBOUR},
            headers=as_(officer["token"]),
        )
        assert again.status_code == 200
        assert len(await svc.store.scan(MEMBERS_ALL)) == 2, "a changed note is a new absence"
        listed = (await http.get("/v1/absences?village=dongshan")).json()
        assert [a["phone"] for a in listed["absences"]] == [OFFICER]

        incident, phones = await rung(svc, channel, http, "leave-1")
        assert NEIGHBOUR in phones and OFFICER not in phones
        view = (await http.get(f"/v1/incidents/{incident}")).json()
        sub = next(p for p in view["responders"] if p["phone"] == NEIGHBOUR)
        assert sub["role"] == "officer" and sub["stands_in_for"] == OFFICER and sub["recipient"] is True
        away = next(p for p in view["responders"] if p["phone"] == OFFICER)
        assert away["recipient"] is False, "the officer on leave is not rung (but may answer)"

        for who in (NEIGHBOUR, LEADER):
            answered = await answer_as(svc, http, incident, who, "accept")
            assert answered.status_code == 200, answered.text
        covered = (await http.get(f"/v1/incidents/{incident}")).json()
        assert covered["covered"] is True
        assert covered["cover"]["kind"] == "full"

        audit = (await http.get("/v1/audit", params={"action": "member.absence"})).json()
        mine = [e for e in audit["entries"] if e["name"] == "吴建军"]
        assert mine and all(e["target"].endswith("0009") and OFFICER not in e["target"] for e in mine), mine

        ended = await http.delete(f"/v1/members/{OFFICER}/absence", headers=as_(officer["token"]))
        assert ended.status_code == 200 and ended.json()["ended"] is True and ended.json()["absence"] is None
        assert isinstance((await svc.store.scan(MEMBERS_ALL))[-1].event, AbsenceEnded)
        twice = await http.delete(f"/v1/members/{OFFICER}/absence", headers=as_(officer["token"]))
        assert twice.status_code == 200 and twice.json()["ended"] is False
        await http.post(
            f"/v1/incidents/{incident}/responses", json={"responder": LEADER, "action": "resolve", "category": "help"}
        )
        _, phones = await rung(svc, channel, http, "back-1")
        assert OFFICER in phones and NEIGHBOUR not in phones


async def test_an_officer_marks_absences_only_in_its_villages(service: tuple[Service, RecordingChannel]) -> None:
    svc, _ = service
    async with service_client(svc) as http:
        west = (
            await http.post("/v1/tokens", json={"name": "钱警官", "role": "officer", "villages": ["xishan"]})
        ).json()
        body = {"until": hours(2), "substitute": NEIGHBOUR}
        r = await http.put(f"/v1/members/{OFFICER}/absence", json=body, headers=as_(west["token"]))
        assert r.status_code == 404, "another village's member is as good as unknown"
        assert (await http.get(f"/v1/members/{OFFICER}/absence", headers=as_(west["token"]))).status_code == 404
        assert (await svc.store.scan(MEMBERS_ALL)) == []
        r = await http.put("/v1/members/13600000000/absence", json=body)
        assert r.status_code == 404, "a number in no group"
        r = await http.put(f"/v1/members/{OFFICER}/absence", json={"from": hours(-3), "until": hours(-1)})
        assert r.status_code == 422 and "already over" in r.json()["error"]
        r = await http.put(f"/v1/members/{OFFICER}/absence", json={"until": "2030-01-01T08:00:00"})
        assert r.status_code == 422 and "time zone" in r.json()["error"]
        assert (await svc.store.scan(MEMBERS_ALL)) == [], "nothing refused was written"


async def test_readiness_shows_the_group_an_absent_officer_leaves_short(
    service: tuple[Service, RecordingChannel],
) -> None:
    svc, _ = service
    async with service_client(svc) as http:
        r = await http.put(f"/v1/members/{OFFICER}/absence", json={"until": hours(4)})
        assert r.status_code == 200, r.text

        async def report() -> dict[str, Any]:
            data: dict[str, Any] = (await http.get("/v1/reports/readiness?village=dongshan")).json()
            return data

        data = await eventually(lambda: _short(report), what="the roster read model has the absence")
        assert {(g["group"], m["why"]) for g in data["groups_without_quorum"] for m in g["missing"]} == {
            ("1", "absent"),
            ("2", "absent"),
        }
        absent = data["absent_members"]
        assert {a["group"] for a in absent} == {"1", "2"} and all(a["substitute"] is None for a in absent)
        text = (await http.get("/v1/reports/readiness?village=dongshan&format=csv")).text
        assert "officer: absent" in text and "substitute none" in text

        r = await http.put(f"/v1/members/{OFFICER}/absence", json={"until": hours(4), "substitute": NEIGHBOUR})
        assert r.status_code == 200
        await eventually(lambda: _covered_again(report), what="the substitute fills the officer's place")


async def _short(report: Any) -> dict[str, Any] | None:
    data: dict[str, Any] = await report()
    return data if data["groups_without_quorum"] else None


async def _covered_again(report: Any) -> bool:
    data = await report()
    return not data["groups_without_quorum"] and all(a["substitute_rung"] for a in data["absent_members"])


async def test_absences_set_at_once_are_each_recorded_and_the_last_one_holds(
    service: tuple[Service, RecordingChannel],
) -> None:
    """Five requests racing on one member: each is decided on the state the one before left (a
    conflict is decided again, never lost), and the directory holds the last one appended."""
    svc, _ = service
    async with service_client(svc) as http:
        untils = [hours(2 + i) for i in range(5)]
        answers = await asyncio.gather(
            *(http.put(f"/v1/members/{OFFICER}/absence", json={"until": u, "substitute": NEIGHBOUR}) for u in untils)
        )
        assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
        stored = [r.event for r in await svc.store.scan(MEMBERS_ALL)]
        assert len(stored) == 5 and all(isinstance(e, AbsenceSet) for e in stored)
        assert sorted(e.until for e in stored if isinstance(e, AbsenceSet)) == sorted(
            datetime.fromisoformat(u) for u in untils
        )
        conflicts = svc.metrics.append_conflicts.labels("member")._value.get()
        print(f"\nfive absences at once: {conflicts:.0f} append conflicts decided again")
        assert conflicts >= 1, "the requests never raced: this test shows nothing"
        last = stored[-1]
        held = svc.directory.directory.absences[OFFICER] if svc.directory else None
        assert isinstance(last, AbsenceSet) and held is not None and held.until == last.until
