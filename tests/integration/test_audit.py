"""The audit trail on a real service: reads of personal data and their refusals leave entries in a
stream of their own, which only an administrator reads (`GET /v1/audit`, JSON or CSV)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dispatch.bootstrap import Service
from dispatch.cli import main
from dispatch.events.subjects import AUDIT_STREAM
from tests.rosters import ROSTER
from tests.rosters import csv as roster_csv
from tests.support import RecordingChannel, service_client, start_service

WEST = roster_csv(
    [
        ("xihe", 1, "13700000001", "household", "钱秀兰"),
        ("xihe", 1, "13700000008", "leader", "孙立"),
        ("xihe", 1, "13700000009", "officer", "陈国栋"),
    ]
).removeprefix("village,group,phone,role,name\n")


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    svc = await start_service(tmp_path / "data", RecordingChannel(), roster=ROSTER + WEST, audit_retention_days=90)
    try:
        yield svc
    finally:
        await svc.stop()


async def test_an_officers_read_of_another_village_leaves_a_refused_entry(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    async with service_client(service) as admin:
        r = await admin.post("/v1/tokens", json={"name": "吴建军", "role": "officer", "villages": ["dongshan"]})
        officer_id, officer = r.json()["token_id"], {"Authorization": f"Bearer {r.json()['token']}"}
        east = (await admin.post("/v1/calls", json={"call_id": "e-1", "caller": "13800000001"})).json()["incident_id"]
        west = (await admin.post("/v1/calls", json={"call_id": "w-1", "caller": "13700000001"})).json()["incident_id"]

        assert (await admin.get(f"/v1/incidents/{west}", headers=officer)).status_code == 404
        assert (await admin.get(f"/v1/incidents/{east}", headers=officer)).status_code == 200
        assert (await admin.get("/v1/groups/xihe/1", headers=officer)).status_code == 404
        assert (await admin.get("/v1/audit", headers=officer)).status_code == 403, "only an admin reads the trail"
        assert (await admin.get(f"/v1/incidents/{west}")).status_code == 200

        r = await admin.get("/v1/audit", params={"outcome": "refused"})
        assert r.status_code == 200, r.text
        refused = r.json()["entries"]
        read = [e for e in refused if e["action"] == "incident.read"]
        assert len(read) == 1, refused
        [entry] = read
        assert entry["token_id"] == officer_id and entry["name"] == "吴建军" and entry["role"] == "officer"
        assert entry["target"] == west and entry["village"] == "xihe" and entry["source"] == "127.0.0.1"
        assert {e["action"] for e in refused} == {"incident.read", "group.read", "denied"}
        denied = next(e for e in refused if e["action"] == "denied")
        assert denied["target"] == "GET /v1/audit" and denied["token_id"] == officer_id

        everything = (await admin.get("/v1/audit")).json()["entries"]
        allowed = [(e["action"], e["target"], e["role"]) for e in everything if e["outcome"] == "allowed"]
        assert ("incident.read", east, "officer") in allowed and ("incident.read", west, "admin") in allowed
        assert ("token.issue", officer_id, "admin") in allowed
        assert everything[0]["action"] == "audit.read", "newest first, and reading the trail is itself recorded"

        mine = (await admin.get("/v1/audit", params={"actor": officer_id, "village": "dongshan"})).json()
        assert [e["target"] for e in mine["entries"]] == [east]

        exported = (await admin.get("/v1/audit", params={"format": "csv", "outcome": "refused"})).text
        assert exported.startswith("\ufeff")
        rows = list(csv.DictReader(io.StringIO(exported.lstrip("\ufeff"), newline="")))
        assert {row["action"] for row in rows} == {"incident.read", "group.read", "denied"}
        assert all(row["channel"] == "api" for row in rows)

        bad = await admin.get("/v1/audit", params={"action": "everything"})
        assert bad.status_code == 422 and "action must be one of" in bad.json()["error"]

    # `dispatch audit` prints the same entries
    server, token = service.settings.base_url, service.admin_token
    argv = ["audit", "--outcome", "refused", "--format", "csv", "--server", server, "--token", token]
    capsys.readouterr()
    code = await asyncio.to_thread(main, argv)
    printed = capsys.readouterr().out  # the service logs to the same stdout: the CSV starts at its BOM
    assert code == 0 and "\ufeff" in printed
    rows = list(csv.DictReader(io.StringIO(printed[printed.index("\ufeff") + 1 :], newline="")))
    assert {"incident.read", "group.read", "denied"} <= {row["action"] for row in rows}
    assert any(row["channel"] == "api" and row["name"] == "吴建军" for row in rows)
    assert (
        await asyncio.to_thread(main, ["audit", "--action", "incident.read", "--server", server, "--token", token]) == 0
    )
    table = capsys.readouterr().out
    assert "incident.read" in table and "吴建军" in table and "refused" in table


async def test_the_trail_is_a_stream_of_its_own_with_its_own_retention(service: Service) -> None:
    info: dict[str, Any] = json.loads((await service.nc.request(f"$JS.API.STREAM.INFO.{AUDIT_STREAM}", b"")).data)
    assert info["config"]["max_age"] == 90 * 24 * 3600 * 1_000_000_000
    assert info["config"]["subjects"] == ["dispatch.audit.>"]
    log: dict[str, Any] = json.loads((await service.nc.request("$JS.API.STREAM.INFO.DISPATCH_EVENTS", b"")).data)
    assert log["config"]["max_age"] == 0, "the log keeps its own (for ever)"
    async with service_client(service) as admin:
        before = log["state"]["last_seq"]
        await admin.get("/v1/groups/dongshan/1")
        after: dict[str, Any] = json.loads((await service.nc.request("$JS.API.STREAM.INFO.DISPATCH_EVENTS", b"")).data)
        assert after["state"]["last_seq"] == before, "a read wrote to the log"
        entries = (await admin.get("/v1/audit", params={"action": "group.read"})).json()["entries"]
        assert [e["target"] for e in entries] == ["dongshan/1"]


async def test_an_unreachable_audit_stream_never_refuses_a_read(service: Service) -> None:
    await service.nc.request(f"$JS.API.STREAM.DELETE.{AUDIT_STREAM}", b"")
    async with service_client(service) as admin:
        r = await admin.get("/v1/groups/dongshan/1")
        assert r.status_code == 200
        metrics = (await admin.get("/metrics")).text
    assert "dispatch_audit_failures_total 1.0" in metrics
