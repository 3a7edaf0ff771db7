"""Story (issue 22.4): a villager walks into the station. 吴警官 opens an incident for 东山村 group 1
from the API and the CLI: the group is rung as for a call, the alarm says it is a walk-in and who
opened it, the incident and the history export record the origin and the officer; a retried
submission rings nobody twice; an officer of another village cannot open one here."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
from pathlib import Path

import httpx
import pytest

from dispatch.cli import main
from tests.rosters import ROSTER
from tests.support import RecordingChannel, eventually, service_client, start_service

pytestmark = pytest.mark.asyncio


async def test_an_officer_opens_a_walk_in_and_a_110_transfer(tmp_path: Path) -> None:
    channel = RecordingChannel()
    roster = ROSTER + "xishan,1,13600000001,leader,西山组长\nxishan,1,13600000009,officer,西山民警\n"
    svc = await start_service(tmp_path / "data", channel, roster=roster)
    try:
        async with service_client(svc) as admin:
            r = await admin.post("/v1/tokens", json={"name": "吴警官", "role": "officer", "villages": ["dongshan"]})
            officer_token = r.json()["token"]
            r = await admin.post("/v1/tokens", json={"name": "西山民警", "role": "officer", "villages": ["xishan"]})
            stranger = {"Authorization": f"Bearer {r.json()['token']}"}
        async with httpx.AsyncClient(
            base_url=svc.settings.base_url, timeout=30, headers={"Authorization": f"Bearer {officer_token}"}
        ) as officer:
            report = {
                "report_id": "walk-in-1",
                "village": "dongshan",
                "group": "1",
                "origin": "walk_in",
                "caller": "13700000099",
                "caller_name": "张三",
            }
            r = await officer.post("/v1/incidents", json=report)
            assert r.status_code == 201, r.text
            iid = r.json()["incident_id"]
            await eventually(lambda: len(channel.for_incident(iid)) >= 10, what="the whole group rung")
            again = await officer.post("/v1/incidents", json=report)
            assert again.status_code == 201 and again.json() == {
                "incident_id": iid,
                "status": "raised",
                "duplicate": True,
            }
            refused = await officer.post("/v1/incidents", json={**report, "report_id": "x", "village": "xishan"})
            assert refused.status_code == 404
            async with httpx.AsyncClient(base_url=svc.settings.base_url, timeout=30, headers=stranger) as other:
                assert (await other.post("/v1/incidents", json={**report, "report_id": "y"})).status_code == 404

            shown = (await officer.get(f"/v1/incidents/{iid}")).json()
            assert shown["origin"] == "walk_in" and shown["opened_by"]["name"] == "吴警官"
            assert shown["caller"]["name"] == "张三"
            assert "吴警官 登记群众来所报警" in shown["timeline"][0]["text"]
            jobs = [job for _, job, _, _ in channel.sent if job.incident_id == iid]
            assert jobs and all("群众来所报警（吴警官登记）" in job.message for job in jobs)
            rung = [t.recipient.phone for t in channel.for_incident(iid)]
            assert len(rung) == len(set(rung)) == 10, "each member once, the retry rang nobody"

        # the CLI, as the same officer: a 110 transfer with no caller
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = await asyncio.to_thread(
                main,
                [
                    "open",
                    "dongshan",
                    "2",
                    "--origin",
                    "110",
                    "--server",
                    svc.settings.base_url,
                    "--token",
                    officer_token,
                ],
            )
        assert code == 0, out.getvalue()
        transfer = out.getvalue().split("incident ", 1)[1].split()[0]
        await eventually(lambda: channel.for_incident(transfer), what="group 2 rung for the transfer")

        async with service_client(svc) as admin:

            async def exported() -> list[dict[str, str]] | None:
                r = await admin.get("/v1/reports/history", params={"format": "csv"})
                rows = list(csv.DictReader(io.StringIO(r.text.lstrip("\ufeff")))) if r.status_code == 200 else []
                return rows if {iid, transfer} <= {row["incident_id"] for row in rows} else None

            rows = {row["incident_id"]: row for row in await eventually(exported, what="both in the export")}
        assert (rows[iid]["origin"], rows[iid]["opened_by"]) == ("walk_in", "吴警官")
        assert (rows[transfer]["origin"], rows[transfer]["opened_by"]) == ("transfer_110", "吴警官")
    finally:
        await svc.stop()
