"""The reports over HTTP: scope by token, phone numbers only for admins, formula-safe CSV, clear
422s, 503 while a read model is rebuilt, and a village's time zone."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from dispatch.bootstrap import Service
from dispatch.projections.incidents import INCIDENTS
from dispatch.settings import Settings
from dispatch.store.server import free_port
from tests.integration.test_reports import ROSTER
from tests.support import answer_as, eventually

# One service for the module (in its event loop): the tests read the same three calls; the one that
# marks a read model as being rebuilt puts it back, and the time zone one changes what no other reads.
pytestmark = pytest.mark.asyncio(loop_scope="module")

OFFICER, LEADER1 = "13900000009", "13800000008"
INJECTION = '=HYPERLINK("http://evil.example";"x")'


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Service, httpx.AsyncClient, httpx.AsyncClient]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("report-api") / "data", http=f"127.0.0.1:{free_port()}")
    svc = Service(settings)
    await svc.start()
    admin = httpx.AsyncClient(base_url=settings.base_url, headers={"Authorization": f"Bearer {svc.admin_token}"})
    try:
        r = await admin.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
        assert r.status_code == 200, r.text
        r = await admin.post("/v1/tokens", json={"name": "吴警官", "role": "officer", "villages": ["dongshan"]})
        bearer = {"Authorization": f"Bearer {r.json()['token']}"}
        officer = httpx.AsyncClient(base_url=settings.base_url, headers=bearer)
        incident = (await admin.post("/v1/calls", json={"call_id": "r-1", "caller": "13800000001"})).json()
        iid = incident["incident_id"]
        for who, action, extra in (
            (OFFICER, "accept", {}),
            (LEADER1, "accept", {}),
            (OFFICER, "arrived", {}),
            (OFFICER, "resolve", {"category": "dispute"}),
        ):
            r = await answer_as(svc, admin, iid, who, action, **extra)
            assert r.status_code == 200, r.text
        await admin.post("/v1/calls", json={"call_id": "r-2", "caller": "13700000001"})
        await admin.post("/v1/calls", json={"call_id": "r-3", "caller": INJECTION})

        async def projected() -> bool:
            report = (await admin.get("/v1/reports/history")).json()
            return report.get("total") == 3 and report["rows"][-1]["status"] == "resolved"

        await eventually(projected, timeout=20, what="the three calls in the history report")
        yield svc, admin, officer
        await officer.aclose()
    finally:
        await admin.aclose()
        await svc.stop()


async def test_an_officer_sees_its_villages_with_phones_masked(
    api: tuple[Service, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    _, admin, officer = api
    mine = (await officer.get("/v1/reports/history")).json()
    assert [r["village"] for r in mine["rows"]] == ["dongshan"] and mine["villages"] == ["dongshan"]
    assert mine["rows"][0]["caller"] == "+86138****0001"
    assert (await officer.get("/v1/reports/history", params={"village": "xishan"})).json()["total"] == 0
    everything = (await admin.get("/v1/reports/history")).json()
    assert {r["village"] for r in everything["rows"]} == {"dongshan", "xishan", None}
    assert "+8613800000001" in {r["caller"] for r in everything["rows"]}

    by_officer = (await officer.get("/v1/reports/response-times", params={"by": "officer", "period": "day"})).json()
    [row] = by_officer["rows"]
    assert row["officer"] == {"phone": "+86139****0009", "name": "吴警官"} and row["incidents"] == 1
    assert row["measures"]["time_to_covered"]["count"] == 1 and row["ack_breached"] == 0
    admin_view = (await admin.get("/v1/reports/response-times", params={"by": "officer"})).json()
    assert "+8613900000009" in {(r["officer"] or {}).get("phone") for r in admin_view["rows"]}

    readiness = (await officer.get("/v1/reports/readiness")).json()
    assert readiness["villages"] == ["dongshan"] and readiness["groups"] == 3
    assert all(m["phone"].count("*") == 4 for m in readiness["silent_members"] + readiness["unreachable_members"])
    stats = (await officer.get("/v1/reports/stats", params={"period": "day"})).json()
    assert sum(t["count"] for t in stats["totals"]) == 1


async def test_csv_exports_cannot_inject_formulas(api: tuple[Service, httpx.AsyncClient, httpx.AsyncClient]) -> None:
    _, admin, officer = api
    r = await admin.get("/v1/reports/history", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="history.csv"'
    assert r.text.startswith("\ufeff")
    assert r.headers["content-type"].lower().count("charset") == 1, r.headers["content-type"]
    rows = list(csv.DictReader(io.StringIO(r.text.lstrip("\ufeff"), newline="")))
    assert len(rows) == 3
    callers = {row["caller"] for row in rows}
    assert "'" + INJECTION in callers and "+8613800000001" in callers, "a phone number is a plain number"
    assert all(not v.startswith(("=", "@", "-")) for row in rows for v in row.values())

    silent = (await admin.get("/v1/reports/readiness", params={"format": "csv", "last": 1})).text.lstrip("\ufeff")
    names = {row["name"] for row in csv.DictReader(io.StringIO(silent, newline=""))}
    assert "'@SUM(1+1)" in names, "a roster name is neutralised too"
    masked = (await officer.get("/v1/reports/readiness", params={"format": "csv", "last": 1})).text
    assert "+8613800000004" not in masked and "****" in masked

    measures = (await admin.get("/v1/reports/response-times", params={"format": "csv"})).text.lstrip("\ufeff")
    assert measures.splitlines()[0] == "measure,count,p50_s,p90_s,p99_s"
    counted = {row["measure"]: row["count"] for row in csv.DictReader(io.StringIO(measures, newline=""))}
    assert [counted[k] for k in ("incidents", "covered", "ack_breached", "arrival_breached")] == ["3", "1", "0", "0"]


BAD_FILTERS = [
    ("response-times", {"period": "year"}, "period must be one of day, week, month"),
    ("response-times", {"by": "phone"}, "by must be one of village, group, officer"),
    ("response-times", {"since": "last tuesday"}, "since: 'last tuesday' is not a date"),
    ("history", {"status": "lost"}, "status must be one of"),
    ("history", {"category": "murder"}, "category must be one of"),
    ("history", {"group": "1"}, "group needs village"),
    ("history", {"limit": "0"}, "limit must be between 1 and 10000"),
    ("history", {"format": "xlsx"}, "format must be one of json, csv"),
    ("stats", {"since": "2026-12-01", "until": "2026-11-01"}, "since must be before until"),
    ("readiness", {"last": "0"}, "last must be between 1 and 50"),
]


async def test_bad_filters_are_422_naming_the_filter(
    api: tuple[Service, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    _, admin, _ = api
    for path, params, reason in BAD_FILTERS:
        r = await admin.get(f"/v1/reports/{path}", params=params)
        assert r.status_code == 422, (path, params, r.text)
        assert reason in r.json()["error"], (path, params, r.text)


async def test_reports_wait_for_a_read_model_being_rebuilt(
    api: tuple[Service, httpx.AsyncClient, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, admin, _ = api
    runner = next(r for r in svc.runners if r.name == INCIDENTS)
    conn = svc.db.connect()
    conn.execute("UPDATE projection_versions SET state = 'building' WHERE name = ?", (INCIDENTS,))
    monkeypatch.setattr(runner, "_active", False)
    r = await admin.get("/v1/reports/history")
    assert r.status_code == 503 and r.headers["retry-after"]
    assert f"read models being rebuilt, try again shortly: {INCIDENTS} 100%" in r.json()["error"]
    conn.execute("UPDATE projection_versions SET state = 'active' WHERE name = ?", (INCIDENTS,))
    assert (await admin.get("/v1/reports/history")).status_code == 200, "another process finished the rebuild"
    conn.close()


async def test_a_village_time_zone_shows_in_its_reports(
    api: tuple[Service, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    _, admin, officer = api
    before = (await admin.get("/v1/reports/history", params={"village": "dongshan"})).json()["rows"][0]
    assert before["raised_at"].endswith("+08:00") and before["time_zone"] == "Asia/Shanghai"
    bad = await admin.put("/v1/villages/dongshan/settings", json={"time_zone": "Mars/Olympus"})
    assert bad.status_code == 422 and "not an IANA time zone" in bad.json()["error"]
    r = await admin.put("/v1/villages/dongshan/settings", json={"time_zone": "Asia/Kathmandu"})
    assert r.status_code == 200 and r.json()["time_zone"] == "Asia/Kathmandu"

    async def shifted() -> dict[str, Any] | None:
        row: dict[str, Any] = (await officer.get("/v1/reports/history")).json()["rows"][0]
        return row if row["time_zone"] == "Asia/Kathmandu" else None

    after = await eventually(shifted, timeout=20)
    assert after["raised_at"].endswith("+05:45") and after["incident_id"] == before["incident_id"]
    table = (await officer.get("/v1/villages/dongshan")).json()
    assert table["time_zone"] == "Asia/Kathmandu" and table["overrides"]["time_zone"] == "Asia/Kathmandu"


async def test_projection_lag_is_exported_per_projection(
    api: tuple[Service, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    svc, admin, _ = api
    assert {r.name for r in svc.runners} == {"incidents_v5", "roster_v1"}

    async def caught_up() -> bool:
        text = (await admin.get("/metrics")).text
        return all(f'dispatch_projection_lag_events{{projection="{r.name}"}} 0.0' in text for r in svc.runners)

    await eventually(caught_up, timeout=20)
