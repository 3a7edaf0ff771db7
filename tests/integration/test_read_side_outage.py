"""The read side's database down while alarms come in, then back: a real PostgreSQL cluster stopped as a
crash would stop it (`pg_ctl stop -m immediate`) under the running service, and started again.

Throughout the outage every alarm is answered 202 and rings its whole group; /readyz, the reports and
the incident list say the database is down (503, never a 500). Once it is back the read models catch
up, row for row, to what a replay of the log builds, and the projection lag returns to 0."""

from __future__ import annotations

import asyncio
import math
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dispatch.bootstrap import Service
from dispatch.projections.incidents import INCIDENTS, RESPONDERS
from dispatch.projections.rebuild import rebuild_all
from dispatch.projections.registry import all_projections
from dispatch.projections.roster import DUTY_DESKS, GROUPS, MEMBERS, VILLAGES
from dispatch.projections.sql import Database
from tests.pgcluster import PrivateCluster
from tests.support import RecordingChannel, eventually, service_client, start_service

TABLES = {
    INCIDENTS: "id",
    RESPONDERS: "incident_id, phone",
    GROUPS: "village, grp",
    MEMBERS: "village, grp, phone",
    VILLAGES: "village",
    DUTY_DESKS: "village, phone",
}
GROUPS_N = 8
BEFORE, DURING = 2, 4


def roster() -> str:
    lines = ["village,group,phone,role,name"]
    for g in range(GROUPS_N):
        base = 13000000000 + g * 100
        roles = ["leader", "officer", "assistant"] + ["household"] * 3
        lines += [f"hill,{g},{base + k},{role},m{k}" for k, role in enumerate(roles)]
    return "\n".join(lines) + "\n"


def caller(group: int) -> str:
    return str(13000000000 + group * 100 + 5)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    """A PostgreSQL cluster of this test's own: the machine's server is shared, and this one is stopped."""
    pg = PrivateCluster()
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


def snapshot(db: Database) -> dict[str, list[tuple[object, ...]]]:
    conn = db.connect()
    try:
        return {table: conn.query(f"SELECT * FROM {table} ORDER BY {key}") for table, key in TABLES.items()}
    finally:
        conn.close()


async def raise_alarm(http: httpx.AsyncClient, channel: RecordingChannel, group: int, call_id: str) -> str:
    """An alarm by the API, answered 202 and rung to all six of its group; its incident id."""
    r = await http.post("/v1/calls", json={"call_id": call_id, "caller": caller(group)})
    assert r.status_code == 202, r.text
    incident: str = r.json()["incident_id"]

    def rung() -> set[str]:
        return {target.recipient.phone for _, job, target, _ in channel.sent if job.incident_id == incident}

    await eventually(lambda: len(rung()) >= 5, timeout=20, what=f"alarm {call_id} rung")
    assert rung() == {f"+86{13000000000 + group * 100 + k}" for k in range(6) if k != 5}
    return incident


def lag(svc: Service) -> float:
    return max(r.lag() for r in svc.runners)


async def test_postgres_read_side_down_alarms_ring_and_it_catches_up_to_a_replay(
    cluster: PrivateCluster, tmp_path: Path
) -> None:
    channel = RecordingChannel()
    url = f"{cluster.url}?schema=live"
    svc = await start_service(tmp_path / "data", channel, roster=roster(), database_url=url)
    try:
        async with service_client(svc) as http:
            incidents = [await raise_alarm(http, channel, g, f"before-{g}") for g in range(BEFORE)]

            async def reported(total: int) -> bool:
                r = await http.get("/v1/reports/history")
                return r.status_code == 200 and r.json()["total"] == total

            await eventually(lambda: reported(BEFORE), what="the first alarms in the reports")

            await asyncio.to_thread(cluster.halt)
            for g in range(BEFORE, BEFORE + DURING):
                incidents.append(await raise_alarm(http, channel, g, f"during-{g}"))
            ready = await http.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"] is False and ready.json()["checks"]["nats"] is True
            for path in ("/v1/reports/history", "/v1/incidents"):
                r = await http.get(path)
                assert r.status_code == 503, f"{path}: {r.status_code} {r.text}"
                assert r.headers.get("retry-after"), path
            detail = await http.get(f"/v1/incidents/{incidents[-1]}")
            assert detail.status_code == 200, "an incident's detail is read from the log, not the read side"
            assert lag(svc) > 0, "the events of the outage wait to be applied"
            print(f"\nread side down: {DURING} alarms rung, lag {lag(svc):.0f} events")

            await asyncio.to_thread(cluster.resume)
            await eventually(lambda: reported(BEFORE + DURING), timeout=30, what="the outage's alarms in the reports")
            await eventually(lambda: lag(svc) == 0, timeout=30, what="no projection lag left")

            async def ready_again() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await eventually(ready_again, timeout=30, what="/readyz ready again")
            listed = (await http.get("/v1/incidents?limit=100")).json()
        assert {i["incident_id"] for i in listed["incidents"]} >= set(incidents), listed
        assert lag(svc) == 0
        resumed = await asyncio.to_thread(snapshot, Database(url))
        replay = Database(f"{cluster.url}?schema=replay_{uuid.uuid4().hex[:6]}")
        assert svc.nc is not None
        await rebuild_all(svc.nc, replay, all_projections(), progress=False)
        replayed = await asyncio.to_thread(snapshot, replay)
        for table in TABLES:
            assert resumed[table] == replayed[table], f"{table} differs from a replay"
        assert len(resumed[INCIDENTS]) == BEFORE + DURING
    finally:
        await svc.stop()


HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


async def test_sqlite_read_side_locked_by_another_process_alarms_ring_and_it_catches_up(tmp_path: Path) -> None:
    """An operator's `sqlite3` shell left mid-transaction holds the write lock of the in-process read
    side: alarms still ring, and once the lock is released the read models equal a replay."""
    channel = RecordingChannel()
    data = tmp_path / "data"
    svc = await start_service(data, channel, roster=roster())
    holder: asyncio.subprocess.Process | None = None
    try:
        async with service_client(svc) as http:
            incidents = [await raise_alarm(http, channel, g, f"before-{g}") for g in range(BEFORE)]

            async def reported(total: int) -> bool:
                r = await http.get("/v1/reports/history")
                return r.status_code == 200 and r.json()["total"] == total

            await eventually(lambda: reported(BEFORE), what="the first alarms in the reports")
            holder = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                HOLD_LOCK,
                str(svc.db.path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert holder.stdout is not None and holder.stdin is not None
            assert (await asyncio.wait_for(holder.stdout.readline(), 30)) == b"locked\n"
            for g in range(BEFORE, BEFORE + DURING):
                incidents.append(await raise_alarm(http, channel, g, f"during-{g}"))
            await eventually(lambda: lag(svc) > 0, what="the locked-out events waiting to be applied")
            r = await http.get("/v1/reports/history")
            assert r.status_code in (200, 503), f"{r.status_code} {r.text}"
            print(f"\nread side locked: {DURING} alarms rung, lag {lag(svc):.0f} events, reports {r.status_code}")
            holder.stdin.write(b"\n")
            await holder.stdin.drain()
            assert await asyncio.wait_for(holder.wait(), 30) == 0
            await eventually(lambda: reported(BEFORE + DURING), timeout=60, what="the locked-out alarms reported")
            await eventually(lambda: lag(svc) == 0, timeout=30, what="no projection lag left")
            assert (await http.get("/readyz")).status_code == 200
        resumed = await asyncio.to_thread(snapshot, svc.db)
        replay = Database.sqlite(tmp_path / "replay.db")
        assert svc.nc is not None
        await rebuild_all(svc.nc, replay, all_projections(), progress=False)
        replayed = await asyncio.to_thread(snapshot, replay)
        for table in TABLES:
            assert resumed[table] == replayed[table], f"{table} differs from a replay"
        assert len(resumed[INCIDENTS]) == BEFORE + DURING
    finally:
        if holder is not None and holder.returncode is None:
            holder.kill()
            await holder.wait()
        await svc.stop()


async def equal_to_a_replay(svc: Service, db: Database, replay: Database, incidents: int) -> None:
    """Every read-model table of `db` equals what a replay of the log builds in `replay`."""
    resumed = await asyncio.to_thread(snapshot, db)
    assert svc.nc is not None
    await rebuild_all(svc.nc, replay, all_projections(), progress=False)
    replayed = await asyncio.to_thread(snapshot, replay)
    for table in TABLES:
        assert resumed[table] == replayed[table], f"{table} differs from a replay"
    assert len(resumed[INCIDENTS]) == incidents


@pytest.mark.parametrize("read_models", ["here", "elsewhere"])
async def test_postgres_down_when_the_service_starts_it_starts_rings_and_the_read_side_follows(
    cluster: PrivateCluster, tmp_path: Path, read_models: str
) -> None:
    """After a power cut the database may come back after dispatch: the service starts without it
    (it exited before, and rang nothing until the database was up), and the read side follows once
    it is there: here the projections catch up to a replay; elsewhere the tables are made for the
    worker's views."""
    await asyncio.to_thread(cluster.halt)
    channel = RecordingChannel()
    url = f"{cluster.url}?schema=live"
    svc = await start_service(tmp_path / "data", channel, roster=roster(), database_url=url, read_models=read_models)
    try:
        async with service_client(svc) as http:
            incidents = [await raise_alarm(http, channel, g, f"cold-{g}") for g in range(DURING)]
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] is False, ready.text
            r = await http.get("/v1/reports/history")
            assert r.status_code == 503, f"{r.status_code} {r.text}"
            if read_models == "here":
                assert ready.json()["checks"]["projections"] is False
                assert math.isnan(lag(svc)), "nothing can be known of the lag before the database answers"

            await asyncio.to_thread(cluster.resume)
            if read_models == "elsewhere":

                def tables_made() -> bool:
                    conn = Database(url).connect()
                    try:
                        return conn.one(f"SELECT COUNT(*) FROM {INCIDENTS}") == (0,)
                    except Exception:
                        return False
                    finally:
                        conn.close()

                await eventually(lambda: asyncio.to_thread(tables_made), timeout=30, what="the read side's tables")
                return

            async def reported() -> bool:
                r = await http.get("/v1/reports/history")
                return r.status_code == 200 and r.json()["total"] == DURING

            await eventually(reported, timeout=30, what="the alarms rung without a database in the reports")
            await eventually(lambda: lag(svc) == 0, timeout=30, what="no projection lag left")
            assert (await http.get("/readyz")).status_code == 200
        assert len(incidents) == DURING
        replay = Database(f"{cluster.url}?schema=replay_{uuid.uuid4().hex[:6]}")
        await equal_to_a_replay(svc, Database(url), replay, DURING)
    finally:
        await svc.stop()
