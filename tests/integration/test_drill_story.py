"""Story (issue 22.3): 吴警官 drills 东山村 group 1 from the API. Every member is rung, every message
says 演练 first; the leader answers but the officer is slow, so the ack deadline passes and the
station is told (tier 1) — and nothing goes further, the county is never called. A retried request
rings nobody twice; a duty desk may not drill, an officer of another village cannot see the group.
Group 2's drill is set for a time: the NATS schedule starts it then; another set drill is called off
and its schedule, when it fires, opens nothing. A drill from the CLI. The statistics and the response
times count only the real alarm; readiness reports each group's last drill, who answered and how fast.
Real nats-server, real HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js.errors import NotFoundError

from dispatch.bootstrap import Service
from dispatch.cli import main
from dispatch.domain.drill import drill_key
from dispatch.events.subjects import TIMERS_STREAM, drill_fired_subject, schedule_subject, timer_fired_subject
from tests.rosters import ROSTER
from tests.support import (
    HANDLED_STREAMS,
    RecordingChannel,
    answer_as,
    eventually,
    handlers_idle,
    service_client,
    start_service,
)

pytestmark = pytest.mark.asyncio

OFFICER, LEADER = "+8613900000009", "+8613800000008"
EVERYTHING = (*HANDLED_STREAMS, TIMERS_STREAM)


async def stored(svc: Service, subject: str) -> bool:
    assert svc.nc is not None
    try:
        await svc.nc.jetstream().get_last_msg(TIMERS_STREAM, subject)
    except NotFoundError:
        return False
    return True


async def tiers(http: httpx.AsyncClient, incident: str) -> list[int]:
    view = (await http.get(f"/v1/incidents/{incident}")).json()
    return [e["detail"]["tier"] for e in view["timeline"] if e["type"] == "IncidentEscalated"]


async def test_a_drill_rings_says_drill_stops_at_the_station_and_is_reported_apart(tmp_path: Path) -> None:
    channel = RecordingChannel()
    roster = ROSTER + "xishan,1,13600000001,leader,西山组长\nxishan,1,13600000009,officer,西山民警\n"
    svc = await start_service(
        tmp_path / "data",
        channel,
        roster=roster,
        ack_deadline_s=2.0,
        escalate_after_s=3.0,
        command_centre="+8673100000110",
    )
    try:
        async with service_client(svc) as admin:
            r = await admin.post(
                "/v1/tokens", json={"name": "吴警官", "role": "officer", "villages": ["dongshan"], "phone": OFFICER}
            )
            assert r.status_code == 201, r.text
            officer_token = r.json()["token"]
            r = await admin.post("/v1/tokens", json={"name": "西山民警", "role": "officer", "villages": ["xishan"]})
            stranger = {"Authorization": f"Bearer {r.json()['token']}"}
            r = await admin.post("/v1/tokens", json={"name": "值班室", "role": "duty_desk", "villages": ["dongshan"]})
            desk = {"Authorization": f"Bearer {r.json()['token']}"}

            # a real alarm first, covered and resolved: the one the reports count
            real = (await admin.post("/v1/calls", json={"call_id": "real-1", "caller": "13800000001"})).json()
            for who in (OFFICER, LEADER):
                assert (await answer_as(svc, admin, real["incident_id"], who, "accept")).status_code == 200
            r = await answer_as(svc, admin, real["incident_id"], LEADER, "resolve", category="dispute")
            assert r.status_code == 200, r.text

        async with httpx.AsyncClient(
            base_url=svc.settings.base_url, timeout=30, headers={"Authorization": f"Bearer {officer_token}"}
        ) as officer:
            drill = {"drill_id": "drill-1", "village": "dongshan", "group": "1"}
            r = await officer.post("/v1/drills", json=drill)
            assert r.status_code == 201, r.text
            assert r.json()["status"] == "raised" and not r.json()["duplicate"]
            iid = r.json()["incident_id"]
            await eventually(lambda: len(channel.for_incident(iid)) >= 10, what="the whole group rung")
            again = await officer.post("/v1/drills", json=drill)
            assert again.status_code == 201 and again.json()["incident_id"] == iid and again.json()["duplicate"]
            assert (await officer.post("/v1/drills", json={**drill, "village": "xishan"})).status_code == 404
            async with httpx.AsyncClient(base_url=svc.settings.base_url, timeout=30) as other:
                assert (await other.post("/v1/drills", json=drill, headers=stranger)).status_code == 404
                assert (await other.post("/v1/drills", json=drill, headers=desk)).status_code == 403

            jobs = [job for _, job, _, _ in channel.sent if job.incident_id == iid]
            assert jobs and all(job.drill and job.message.startswith("【演练】") for job in jobs)
            assert all(job.spoken.startswith("演练") and job.message_en.startswith("DRILL") for job in jobs)
            rung = [t.recipient.phone for t in channel.for_incident(iid)]
            assert len(rung) == len(set(rung)) == 10, "each member once, the retry rang nobody"

            shown = (await officer.get(f"/v1/incidents/{iid}")).json()
            assert shown["drill"] and shown["origin"] == "drill" and shown["opened_by"]["name"] == "吴警官"
            assert shown["timeline"][0]["text"].startswith("【演练】吴警官 发起")

            # the leader answers; the officer is slow: the ack deadline passes, the station is told
            assert (await answer_as(svc, officer, iid, LEADER, "accept")).status_code == 200

            async def at_the_station() -> bool:
                return await tiers(officer, iid) == [1]

            await eventually(at_the_station, timeout=15, what="tier 1 (the station) after the ack deadline")
            # the tier is in the log before the fan-out rings it: wait for the ringing, then look at it
            escalated = await eventually(
                lambda: [job for _, job, _, _ in channel.sent if job.incident_id == iid and job.kind == "escalation"],
                what="the station's escalation rung",
            )
            assert escalated and all(job.message.startswith("【演练】【警情升级·一级】") for job in escalated)

            async def ack_deadline_handled() -> bool:
                return await stored(svc, timer_fired_subject(iid, "ack")) and await handlers_idle(svc, EVERYTHING)

            await eventually(ack_deadline_handled, what="the ack deadline fired and its handling done")
            assert not await stored(svc, schedule_subject(iid, "escalate")), "no county deadline is even set"
            r = await answer_as(svc, officer, iid, OFFICER, "accept")
            assert r.status_code == 200 and r.json()["covered"]
            await eventually(lambda: handlers_idle(svc, EVERYTHING), what="every trigger handled")
            assert await tiers(officer, iid) == [1], "never the county"
            assert not any(
                t.recipient.role == "command_centre" for _, job, t, _ in channel.sent if job.incident_id == iid
            )
            r = await answer_as(svc, officer, iid, OFFICER, "cancel", reason="drill")
            assert r.status_code == 200, r.text

            # group 2's drill set for a time, and another called off
            soon = datetime.now(UTC) + timedelta(seconds=2)
            r = await officer.post(
                "/v1/drills", json={"drill_id": "drill-2", "village": "dongshan", "group": "2", "at": soon.isoformat()}
            )
            assert r.status_code == 201, r.text
            assert r.json()["status"] == "scheduled" and r.json()["incident_id"] is None
            later = {"drill_id": "drill-3", "village": "dongshan", "group": "2", "at": soon.isoformat()}
            assert (await officer.post("/v1/drills", json=later)).status_code == 201
            r = await officer.delete("/v1/drills/drill-3")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"

            async def started() -> Any:
                view = (await officer.get("/v1/drills/drill-2")).json()
                return view if view["status"] == "raised" else None

            view = await eventually(started, timeout=15, what="the scheduled drill started by its schedule")
            scheduled_iid = view["incident_id"]
            await eventually(lambda: channel.for_incident(scheduled_iid), what="group 2 rung for its drill")
            jobs = [job for _, job, _, _ in channel.sent if job.incident_id == scheduled_iid]
            assert all(job.message.startswith("【演练】") for job in jobs)
            assert (await officer.delete("/v1/drills/drill-2")).status_code == 409, "a started drill is not called off"

            async def cancelled_fired() -> bool:
                fired = await stored(svc, drill_fired_subject(drill_key("drill-3")))
                return fired and await handlers_idle(svc, EVERYTHING)

            await eventually(cancelled_fired, timeout=15, what="the called-off drill's schedule fired and handled")
            view3 = (await officer.get("/v1/drills/drill-3")).json()
            assert view3["status"] == "cancelled" and view3["incident_id"] is None
            opened = {job.incident_id for _, job, _, _ in channel.sent}
            assert opened == {real["incident_id"], iid, scheduled_iid}, "the called-off drill rang nobody"

        # a drill from the CLI, as the same officer
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            argv = ["drill", "dongshan", "2", "--drill-id", "cli-1", "--server", svc.settings.base_url]
            code = await asyncio.to_thread(main, [*argv, "--token", officer_token])
        assert code == 0, out.getvalue()
        cli_iid = out.getvalue().split("incident ", 1)[1].split()[0]
        await eventually(lambda: channel.for_incident(cli_iid), what="group 2 rung for the CLI's drill")

        async with service_client(svc) as admin:

            async def reports() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
                s = (await admin.get("/v1/reports/stats", params={"period": "day"})).json()
                drills = sum(r["count"] for r in s.get("rows", []) if r["category"] == "drill")
                if drills != 3:
                    return None
                times = (await admin.get("/v1/reports/response-times")).json()
                ready = (await admin.get("/v1/reports/readiness")).json()
                return s, times, ready

            stats, times, ready = await eventually(reports, what="the read models hold the three drills")
        assert sum(t["count"] for t in stats["totals"]) == 1, "only the real alarm is an incident"
        assert times["incidents"] == 1, "drills are left out of the response times"
        last = {(d["village"], d["group"]): d for d in ready["drills"]}
        first = last[("dongshan", "1")]
        assert first["incident_id"] == iid and first["opened_by"] == "吴警官" and first["covered"]
        assert [p["role"] for p in first["answered"]] == ["leader", "officer"], "who answered, in order"
        assert first["time_to_first_accept"] is not None and first["time_to_covered"] >= 2.0
        assert all(p["after_s"] is not None for p in first["answered"])
        assert len(first["not_answered"]) == 8
        assert last[("dongshan", "2")]["incident_id"] in (scheduled_iid, cli_iid)
        assert ready["groups_never_drilled"] == 1, "xishan 1 was never drilled"
    finally:
        await svc.stop()
