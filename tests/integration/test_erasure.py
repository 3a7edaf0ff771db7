"""Erasure by crypto-shredding, end to end on a real service (real NATS, SQLite, HTTP on loopback):
personal fields are sealed in the log, a villager calls, is unbound, is erased with
`dispatch people erase`, the read models are rebuilt, and the whole number is then in no file
dispatch wrote (JetStream's, SQLite's, the directory snapshot) nor in its logs, while the incident
still loads with "已删除" in its place."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from dispatch.channels.base import Transient
from dispatch.cli.people import run_people
from dispatch.events.audit import AuditEntry
from dispatch.events.model import AlarmRaised, MemberBound
from dispatch.events.sealing import ERASED, is_sealed
from dispatch.events.subjects import EVENTS_STREAM, incident_subject
from dispatch.observe import logging as dlog
from dispatch.settings import Settings
from dispatch.store.audit import AuditTrail
from dispatch.store.keys import STREAM as KEYS_STREAM
from dispatch.store.provision import provision
from tests.rosters import ROSTER
from tests.support import RecordingChannel, eventually, service_client, start_service

pytestmark = pytest.mark.usefixtures("restore_logging")

ERASED_NATIONAL = "13800000007"
ERASED_E164 = "+86" + ERASED_NATIONAL
KEPT = "13800000001"


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under `root` whose bytes hold `needle`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def without(roster: str, national: str) -> str:
    return "".join(line + "\n" for line in roster.splitlines() if national not in line)


async def test_an_erased_number_is_in_no_file_after_a_replay_and_reads_as_erased(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    dlog.configure("json", "debug")
    channel = RecordingChannel()
    svc = await start_service(data, channel, roster=ROSTER, delivery_backoff_base=0.1, delivery_backoff_max=0.2)
    try:
        stored = await svc.store.load("dispatch.evt.group.dongshan.1")
        raw = await svc.nc.jetstream().get_msg(EVENTS_STREAM, seq=stored[0].seq)  # type: ignore[union-attr]
        bound = [r.event for r in stored if isinstance(r.event, MemberBound)]
        assert ERASED_E164 in {e.phone for e in bound}, "the store reads the numbers back in clear"
        assert ERASED_NATIONAL.encode() not in raw.data

        async with service_client(svc) as http:
            r = await http.post("/v1/calls", json={"call_id": "erase-1", "caller": ERASED_NATIONAL})
            assert r.status_code == 202, r.text
            incident = r.json()["incident_id"]
            r = await http.post(
                f"/v1/incidents/{incident}/responses",
                json={"responder": "13900000009", "action": "resolve", "category": "help", "note": "老人摔倒，已送医"},
            )
            assert r.status_code == 200, r.text
            view = (await http.get(f"/v1/incidents/{incident}")).json()
            assert view["caller"]["phone"] == ERASED_E164 and view["caller"]["name"] == "杨淑芬"
            channel.plan[ERASED_E164] = [Transient(reason="busy")]  # its retry goes through the work queue
            r = await http.post("/v1/calls", json={"call_id": "erase-2", "caller": KEPT})
            assert r.status_code == 202, r.text
            second = r.json()["incident_id"]
            await eventually(
                lambda: [t.recipient.phone for t in channel.for_incident(second)].count(ERASED_E164) == 2,
                what="the erased number's alert retried through DISPATCH_DELIVERY",
            )
            r = await http.post(
                f"/v1/incidents/{second}/responses",
                json={"responder": "13900000009", "action": "cancel", "reason": "caller_safe"},
            )
            assert r.status_code == 200, r.text
            r = await http.post(
                "/v1/groups/import",
                content=without(ROSTER, ERASED_NATIONAL).encode(),
                headers={"Content-Type": "text/csv"},
            )
            assert r.status_code == 200, r.text
        opened = (await svc.store.load(incident_subject(incident)))[0].event
        assert isinstance(opened, AlarmRaised) and opened.caller.phone == ERASED_E164
        await eventually(lambda: not svc.directory.directory.memberships(ERASED_E164), what="the number unbound")
        kid = await svc.keyring.kid_of(ERASED_E164)
        assert kid is not None
        key = (await svc.keyring.kv.get(f"k.{kid}")).value
        assert key and files_holding(data, key), "the key is in the key store's files before the erasure"
    finally:
        await svc.stop()

    before = files_holding(data, ERASED_NATIONAL.encode())
    assert any(name.endswith(".db") or ".db-" in name for name in before), (
        f"the read models hold the number before the erasure (else this test proves nothing): {before}"
    )
    assert not [n for n in before if n.startswith("nats/") and "KV_" not in n and "DISPATCH_EVENTS" in n], before

    settings = Settings(data_dir=data)
    args = argparse.Namespace(number=ERASED_NATIONAL, no_replay=False)
    assert await run_people(settings, args) == 0
    assert "已删除" in capfd.readouterr().out

    assert files_holding(data, ERASED_NATIONAL.encode()) == []
    assert files_holding(data, ERASED_E164.encode()) == []
    assert files_holding(data, key) == [], "the key's bytes are overwritten, not only marked deleted"
    assert files_holding(data, KEPT.encode()), "a number not erased is still in the read models"

    svc = await start_service(data, RecordingChannel())
    try:
        async with service_client(svc) as http:
            view = (await http.get(f"/v1/incidents/{incident}")).json()
            assert view["caller"]["phone"].startswith(ERASED) and view["caller"]["name"] == ERASED
            timeline = json.dumps(view, ensure_ascii=False)
            assert "杨淑芬" not in timeline and ERASED_NATIONAL not in timeline
            assert "摔倒" in timeline or ERASED in timeline
            audit = (await http.get("/v1/audit", params={"action": "people.erase"})).json()
            assert [e["action"] for e in audit["entries"]] == ["people.erase"]
        keys_raw = await svc.nc.jetstream().get_msg(KEYS_STREAM, subject="$KV.DISPATCH_KEYS.pepper")  # type: ignore[union-attr]
        assert keys_raw.data and not is_sealed(keys_raw.data.decode("latin-1"))
    finally:
        await svc.stop()
    logs = capfd.readouterr()
    assert ERASED_NATIONAL not in logs.out + logs.err


async def test_an_audit_entry_never_holds_a_whole_number(nc: NATS) -> None:
    await provision(nc)
    trail = AuditTrail(nc)
    now = datetime.now(UTC)
    entry = AuditEntry(
        at=now,
        action="denied",
        outcome="refused",
        target=f"GET /v1/members/{ERASED_E164}/absence",
        detail=f"caller={ERASED_NATIONAL}",
    )
    assert await trail.record(entry)
    [stored] = await trail.read(since=now - timedelta(minutes=1))
    assert stored.target.startswith("GET /v1/members/+86") and stored.detail.startswith("caller=")
    assert ERASED_NATIONAL not in stored.target + stored.detail, "the audit stream is deny_delete: masked"
