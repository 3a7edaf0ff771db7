"""Retention (DISPATCH_RETENTION_DAYS) on a real service with a clock of the test's own: a number
unbound longer than the retention is erased, a bound one never; a day's incidents are erased once
older than the retention and none of them is open; each erasure is audited; a second run erases
nothing again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from dispatch.domain.phone import mask
from dispatch.events.model import AlarmRaised, MemberBound
from dispatch.events.sealing import ERASED
from dispatch.events.subjects import incident_subject
from dispatch.handlers.erasure import days_due, unbound_due, unbound_since
from dispatch.store.keys import today
from tests.rosters import ROSTER
from tests.support import RecordingChannel, eventually, service_client, start_service

GONE, KEPT, OFFICER = "13800000007", "13800000001", "13900000009"
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_what_is_due_is_a_function_of_the_log_and_the_clock() -> None:
    def bound(phone: str, group: str, at: datetime) -> MemberBound:
        return MemberBound(at=at, village="v", group=group, phone=phone, name="某", role="household")

    from dispatch.events.model import MemberUnbound

    old = NOW - timedelta(days=40)
    events = [
        bound("+861", "1", old),
        bound("+861", "2", old),
        MemberUnbound(at=old, village="v", group="1", phone="+861"),  # still in group 2
        bound("+862", "1", old),
        MemberUnbound(at=old, village="v", group="1", phone="+862"),
        bound("+863", "1", old),
        MemberUnbound(at=NOW - timedelta(days=5), village="v", group="1", phone="+863"),
    ]
    left = unbound_since(events)
    assert set(left) == {"+862", "+863"}
    assert unbound_due(left, 30, NOW) == ["+862"]
    keyed = ["20261001", "20261103", "20261104", "20261204"]
    assert days_due(keyed, 30, NOW, None) == ["20261001", "20261103"]
    assert days_due(keyed, 30, NOW, datetime(2026, 11, 3, 23, tzinfo=UTC)) == ["20261001"]


async def resolve(http: httpx.AsyncClient, incident: str) -> None:
    r = await http.post(
        f"/v1/incidents/{incident}/responses",
        json={"responder": OFFICER, "action": "resolve", "category": "help", "note": "已处置"},
    )
    assert r.status_code == 200, r.text


async def call(http: httpx.AsyncClient, caller: str, call_id: str) -> str:
    r = await http.post("/v1/calls", json={"call_id": call_id, "caller": caller})
    assert r.status_code == 202, r.text
    incident: str = r.json()["incident_id"]
    return incident


async def test_the_daily_job_erases_the_long_unbound_and_the_closed_days_and_nothing_else(tmp_path: Path) -> None:
    svc = await start_service(tmp_path / "data", RecordingChannel(), roster=ROSTER, retention_days=30)
    try:
        assert svc.retention is not None
        async with service_client(svc) as http:
            closed = await call(http, GONE, "ret-1")
            await resolve(http, closed)
            still_open = await call(http, "13800000011", "ret-2")
            roster = "".join(line + "\n" for line in ROSTER.splitlines() if GONE not in line)
            r = await http.post("/v1/groups/import", content=roster.encode(), headers={"Content-Type": "text/csv"})
            assert r.status_code == 200, r.text
        await eventually(lambda: not svc.directory.directory.memberships("+86" + GONE), what="unbound")
        await eventually(lambda: svc.keyring.opening_key("x", "") is None, what="keyring ready")

        assert await svc.retention.run_once(now=datetime.now(UTC) + timedelta(days=1)) == (
            type(await svc.retention.run_once(now=datetime.now(UTC)))((), ())
        )

        later = datetime.now(UTC) + timedelta(days=31)
        first = await svc.retention.run_once(now=later)
        assert first.numbers == (mask("+86" + GONE),)
        assert first.days == (), "an incident of that day is still open: its day is kept"
        group = [r.event for r in await svc.store.load("dispatch.evt.group.dongshan.1")]
        phones = {e.phone for e in group if isinstance(e, MemberBound)}
        assert "+86" + KEPT in phones, "a bound number is never erased"
        assert any(p.startswith(ERASED) for p in phones) and "+86" + GONE not in phones

        async with service_client(svc) as http:
            await resolve(http, still_open)
            await eventually(
                lambda: (
                    svc.db.thread_connection().one(
                        "SELECT COUNT(*) FROM incidents_v5 WHERE status NOT IN ('resolved', 'cancelled')"
                    )
                    == (0,)
                ),
                what="both incidents closed in the read model",
            )
        second = await svc.retention.run_once(now=later)
        assert second.numbers == () and second.days == (today(),)
        opened = (await svc.store.load(incident_subject(still_open)))[0].event
        assert isinstance(opened, AlarmRaised)
        assert opened.caller.name == ERASED and all(p.name == ERASED for p in opened.recipients)
        assert "+86" + KEPT in {e.phone for e in group if isinstance(e, MemberBound)}
        async with service_client(svc) as http:
            audit = (await http.get("/v1/audit", params={"action": "people.erase"})).json()
        targets = sorted(e["target"] for e in audit["entries"])
        assert len(targets) == 2 and targets[0] == f"day {datetime.now(UTC):%Y-%m-%d}" and targets[1].startswith("key ")
    finally:
        await svc.stop()
