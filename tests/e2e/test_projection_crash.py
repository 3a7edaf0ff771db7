"""Exactly once, shown by killing: a read-side worker is SIGKILLed twice while it applies a large
backlog, restarted each time, and what it leaves equals a from-scratch replay, row for row."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from nats.aio.client import Client as NATS

from dispatch.events import codec
from dispatch.events.subjects import EVENTS_STREAM, stream_of
from dispatch.projections.incidents import INCIDENTS, RESPONDERS, IncidentsProjection
from dispatch.projections.rebuild import rebuild_all
from dispatch.projections.registry import all_projections
from dispatch.projections.roster import DUTY_DESKS, GROUPS, MEMBERS, VILLAGES, RosterProjection
from dispatch.projections.runner import last_matching
from dispatch.projections.sql import Database
from dispatch.sim.synthetic import synthetic_history
from dispatch.store.eventstore import H_MSG_ID, EventStore
from dispatch.store.provision import provision
from dispatch.store.server import EmbeddedNats

pytestmark = pytest.mark.e2e

EVENTS = 30_000
TABLES = {
    INCIDENTS: "id",
    RESPONDERS: "incident_id, phone",
    GROUPS: "village, grp",
    MEMBERS: "village, grp, phone",
    VILLAGES: "village",
    DUTY_DESKS: "village, phone",
}


async def publish_history(nc: NATS, events: int) -> tuple[int, int]:
    """The synthetic log, published in order; returns (messages, incident-side events)."""
    history = synthetic_history(events=events, villages=8, days=400)
    count = incident_side = 0
    for stored in [*history.roster, *history.incidents]:
        if stream_of(stored.subject) != EVENTS_STREAM:
            continue
        headers = codec.event_headers(stored.event)
        headers[H_MSG_ID] = stored.msg_id
        await nc.publish(stored.subject, codec.encode(stored.event), headers=headers)
        count += 1
        incident_side += stored.subject.startswith(("dispatch.evt.incident.", "dispatch.evt.notice."))
        if count % 2000 == 0:
            await nc.flush()
    await nc.flush()
    store = EventStore(nc)
    deadline = time.monotonic() + 30
    while await store.stream_last_seq() < count:
        assert time.monotonic() < deadline, "the log did not take the whole history"
        await asyncio.sleep(0.05)
    return count, incident_side


def position(db: Database, name: str) -> int:
    conn = db.connect()
    try:
        row = conn.one("SELECT position FROM projection_checkpoints WHERE name = ?", (name,))
        return int(row[0]) if row else 0
    except Exception:
        return 0
    finally:
        conn.close()


def snapshot(db: Database) -> dict[str, list[tuple[object, ...]]]:
    conn = db.connect()
    try:
        return {table: conn.query(f"SELECT * FROM {table} ORDER BY {key}") for table, key in TABLES.items()}
    finally:
        conn.close()


def worker(nats_url: str, db: Database, data: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DISPATCH_DATA_DIR": str(data), "DISPATCH_LOG_FORMAT": "json"}
    log = (data / f"worker-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "dispatch", "projections", "run", "--nats-url", nats_url, "--database-url", db.url],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def kill_when(proc: subprocess.Popen[bytes], db: Database, past: int, timeout: float = 60) -> int:
    """SIGKILL the worker as soon as its incidents checkpoint moves beyond `past`; return where it was."""
    deadline = time.monotonic() + timeout
    while (seen := position(db, INCIDENTS)) <= past:
        assert proc.poll() is None, "the worker exited on its own"
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return seen


async def test_killed_mid_backlog_twice_then_equal_to_a_replay(
    nats_server: EmbeddedNats, nc: NATS, database: Database, tmp_path: Path
) -> None:
    await provision(nc)
    messages, incident_side = await publish_history(nc, EVENTS)
    data = tmp_path / "worker"
    data.mkdir()

    first = kill_when(worker(nats_server.authenticated_url, database, data), database, 0)
    second = kill_when(worker(nats_server.authenticated_url, database, data), database, first)
    assert 0 < first < second < messages, (first, second, messages)

    incidents_end = await last_matching(nc, IncidentsProjection.filter_subjects)
    roster_end = await last_matching(nc, RosterProjection.filter_subjects)
    last = worker(nats_server.authenticated_url, database, data)
    deadline = time.monotonic() + 120
    while (
        position(database, IncidentsProjection().name) < incidents_end or position(database, "roster_v1") < roster_end
    ):
        assert last.poll() is None and time.monotonic() < deadline
        await asyncio.sleep(0.05)
    last.send_signal(signal.SIGTERM)
    assert last.wait(30) == 0
    resumed = snapshot(database)

    fresh = fresh_database(database, tmp_path)
    try:
        applied = await rebuild_all(nc, fresh, all_projections(), progress=False)
        assert applied[IncidentsProjection().name] == incident_side
        replayed = snapshot(fresh)
    finally:
        forget(fresh)
    for table in TABLES:
        assert len(resumed[table]) == len(replayed[table]), table
        assert resumed[table] == replayed[table], f"{table} differs from a replay"
    conn = database.connect()
    assert conn.one(f"SELECT SUM(events) FROM {INCIDENTS}") == (incident_side,), "no event applied twice"
    conn.close()


def fresh_database(database: Database, tmp_path: Path) -> Database:
    if database.dialect == "sqlite":
        return Database.sqlite(tmp_path / "fresh.db")
    assert database.schema
    return Database(database.url.replace(database.schema, f"{database.schema}_f{uuid.uuid4().hex[:6]}"))


def forget(db: Database) -> None:
    if db.dialect == "postgresql" and db.schema:
        with psycopg.connect(db.url.split("?")[0], autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE')
