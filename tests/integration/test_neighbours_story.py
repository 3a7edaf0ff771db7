"""Story (issue 22.1): 东山村 turns its neighbouring groups on (alongside the station; a neighbour's
accept covers as the leader half). 张桂兰 of group 1 calls; the officer accepts but the group's leader
and assistant do not, so the ack deadline passes uncovered: group 2's leader 郑春生 is alerted as a
neighbour (【邻组支援】) together with the station. He accepts and the incident is covered; the
timeline, the incident view and the history and response-time reports say he came from group 2.
Real nats-server, real HTTP on loopback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.rosters import ROSTER
from tests.support import RecordingChannel, answer_as, eventually, service_client, start_service

pytestmark = pytest.mark.asyncio

OFFICER, LEADER, ASSISTANT, NEIGHBOUR = "+8613900000009", "+8613800000008", "+8613900000001", "+8613800000018"


async def test_a_neighbouring_groups_leader_is_alerted_and_covers(tmp_path: Path) -> None:
    channel = RecordingChannel()
    svc = await start_service(tmp_path / "data", channel, roster=ROSTER, ack_deadline_s=2.0, escalate_after_s=60.0)
    try:
        async with service_client(svc) as http:
            r = await http.put(
                "/v1/villages/dongshan/settings",
                json={"neighbours_order": "alongside", "neighbour_covers": True, "neighbours": {"1": ["2"]}},
            )
            assert r.status_code == 200, r.text
            village = (await http.get("/v1/villages/dongshan")).json()
            assert village["neighbours_order"] == "alongside" and village["neighbour_covers"] is True
            assert village["neighbours"] == {"1": ["2"], "2": ["1"]}, "named for 1, the village's others for 2"

            iid = (await http.post("/v1/calls", json={"call_id": "nb-1", "caller": "13800000001"})).json()[
                "incident_id"
            ]
            view = (await http.get(f"/v1/incidents/{iid}")).json()
            assert view["neighbours"]["groups"] == ["2"] and view["neighbours"]["alerted_at"] is None
            assert NEIGHBOUR not in {t.recipient.phone for t in channel.for_incident(iid)}, "not rung at raise"
            assert (await answer_as(svc, http, iid, OFFICER, "accept")).status_code == 200

            async def neighbours_rung() -> list[Any]:
                return [
                    job
                    for _, job, t, _ in channel.sent
                    if job.incident_id == iid and job.kind == "neighbours" and t.recipient.phone == NEIGHBOUR
                ]

            [job] = await eventually(neighbours_rung, what="group 2's leader rung as a neighbour")
            assert job.message.startswith("【邻组支援】dongshan1组本组规定时间内未落实接警"), job.message
            view = (await http.get(f"/v1/incidents/{iid}")).json()
            kinds = [e["type"] for e in view["timeline"]]
            assert "NeighboursAlerted" in kinds and "IncidentEscalated" in kinds, "alongside the station"
            assert not view["covered"]

            r = await answer_as(svc, http, iid, NEIGHBOUR, "accept")
            assert r.status_code == 200 and r.json()["covered"], r.text
            view = (await http.get(f"/v1/incidents/{iid}")).json()
            texts = [e["text"] for e in view["timeline"]]
            assert any("（邻组2组） 已接警" in t for t in texts), texts
            assert any(t.startswith("邻组支援：本组规定时间内未落实接警，通知2组组长/助理") for t in texts), texts
            came = {p["phone"]: p["neighbour_group"] for p in view["responders"]}
            assert came[NEIGHBOUR] == "2" and came[LEADER] is None

            async def reported() -> dict[str, Any] | None:
                rows = (await http.get("/v1/reports/history")).json().get("rows", [])
                row = next((r for r in rows if r["incident_id"] == iid), None)
                return row if row is not None and row["neighbour_accepts"] == 1 else None

            row = await eventually(reported, what="the history report shows the neighbour's accept")
            assert row["neighbours_by"] == "郑春生（2组）"
            times = (await http.get("/v1/reports/response-times")).json()
            assert times["neighbour_accepts"] == 1
    finally:
        await svc.stop()


async def test_a_group_whose_leader_and_assistant_are_away_rings_its_neighbours_with_the_alarm(tmp_path: Path) -> None:
    """东山村 chose nothing (neighbours alongside the station, the default). Group 1's leader and
    assistant are away with no substitute, so its people on duty cannot meet the quorum: group 2's
    leader is rung with the alarm (quorum_unreachable), not a deadline later."""
    channel = RecordingChannel()
    svc = await start_service(tmp_path / "data", channel, roster=ROSTER, ack_deadline_s=600.0, escalate_after_s=900.0)
    try:
        async with service_client(svc) as http:
            until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
            for phone in (LEADER, ASSISTANT):
                r = await http.put(f"/v1/members/{phone}/absence", json={"until": until, "note": "培训"})
                assert r.status_code == 200, r.text
            iid = (await http.post("/v1/calls", json={"call_id": "nb-away", "caller": "13800000001"})).json()[
                "incident_id"
            ]

            async def neighbour_rung() -> list[Any]:
                return [
                    job
                    for _, job, t, _ in channel.sent
                    if job.incident_id == iid and job.kind == "neighbours" and t.recipient.phone == NEIGHBOUR
                ]

            [job] = await eventually(neighbour_rung, what="group 2's leader rung with the alarm")
            assert job.message.startswith("【邻组支援】dongshan1组本组可联系的人员已无法落实接警"), job.message
            view = (await http.get(f"/v1/incidents/{iid}")).json()
            assert view["neighbours"]["order"] == "alongside" and view["neighbours"]["alerted_at"] is not None
            kinds = [e["type"] for e in view["timeline"]]
            assert kinds[:2] == ["AlarmRaised", "NeighboursAlerted"] and "IncidentEscalated" not in kinds
            rung = {t.recipient.phone for _, j, t, _ in channel.sent if j.incident_id == iid}
            assert LEADER not in rung and ASSISTANT not in rung, "the members away are not rung"
    finally:
        await svc.stop()
