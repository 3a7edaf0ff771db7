"""Story (issue 22.5): a roster gives 张桂兰's home; her alarm says where in every message, the
console's incident carries a `geo:` link, and the history export carries the address."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest

from tests.rosters import ROSTER, placed
from tests.support import RecordingChannel, eventually, service_client, start_service

pytestmark = pytest.mark.asyncio


async def test_an_alarm_from_a_placed_home_says_where_everywhere(tmp_path: Path) -> None:
    channel = RecordingChannel()
    svc = await start_service(tmp_path / "data", channel, roster=placed(ROSTER, chinese=True))
    try:
        async with service_client(svc) as http:
            r = await http.post("/v1/calls", json={"call_id": "where-1", "caller": "13800000001"})
            assert r.status_code == 202, r.text
            iid = r.json()["incident_id"]
            await eventually(lambda: len(channel.for_incident(iid)) >= 9, what="every recipient rung")
            messages = {job.message for _, job, _, _ in channel.sent if job.incident_id == iid}
            assert messages and all("dongshan1组 张桂兰家，村东头老槐树旁" in m for m in messages), messages

            shown = (await http.get(f"/v1/incidents/{iid}")).json()
            assert shown["caller"]["place"] == {
                "address": "村东头老槐树旁",
                "lat": 28.228209,
                "lon": 112.938814,
                "geo": "geo:28.228209,112.938814",
                "where": "张桂兰家，村东头老槐树旁",
            }

            async def exported() -> httpx.Response | None:
                r = await http.get("/v1/reports/history", params={"format": "csv"})
                return r if r.status_code == 200 and iid in r.text else None

            export = await eventually(exported, what="the incident in the history export")
            rows = list(csv.DictReader(io.StringIO(export.text.lstrip("\ufeff"))))
            row = next(r for r in rows if r["incident_id"] == iid)
            assert row["caller_address"] == "村东头老槐树旁"
            assert row["caller_geo"] == "geo:28.228209,112.938814"
    finally:
        await svc.stop()
