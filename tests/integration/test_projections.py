"""The incident projection contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from nats.aio.client import Client as NATS

from dispatch.domain.incident import (
    DEFAULT_QUORUM,
    IncomingCall,
    Respond,
    decide_response,
    evolve,
    incident_id_for,
    open_incident,
    parse_quorum,
    route_call,
)
from dispatch.events.model import Event, IncidentEvent, LineEvent, RespondersNotified
from dispatch.events.subjects import incident_subject, line_subject, notice_subject
from dispatch.projections import queries
from dispatch.projections.incidents import IncidentsProjection
from dispatch.projections.runner import ProjectionRunner, apply_batch, checkpoint, ensure_schema
from dispatch.projections.sql import Connection, Database
from dispatch.replay import rebuild
from dispatch.store.eventstore import EventStore, Outgoing, Recorded
from dispatch.store.provision import provision
from tests.unit.fixtures import at, directory_with

OFFICER, LEADER = "+8613900000009", "+8613800000008"


def incident_events(n: int, *, accept_after: float = 30, resolve: bool = True) -> list[Event]:
    """n incidents of group dongshan/1, raised a minute apart; officer and leader accept after `accept_after`."""
    directory = directory_with()
    policy = parse_quorum(DEFAULT_QUORUM)
    events: list[Event] = []
    for i in range(n):
        t0 = i * 60.0
        call = IncomingCall(
            call_id=f"c{i}",
            caller_raw="13800000001",
            caller="+8613800000001",
            callee="6995",
            channel="voice",
            called_at=at(t0),
            at=at(t0),
        )
        opened = open_incident(route_call(directory, call, policy, ()), call, i)
        state = evolve(None, opened)
        assert state is not None
        batch: list[Event] = [opened]
        batch.append(
            RespondersNotified(
                at=at(t0 + 0.5),
                incident_id=opened.incident_id,
                channel="webhook",
                round=1,
                phones=tuple(p.phone for p in opened.recipients),
            )
        )
        steps = [
            (OFFICER, "accept", accept_after + i),
            (LEADER, "accept", accept_after + i + 10),
            (OFFICER, "arrived", 600.0),
        ]
        if resolve:
            steps.append((OFFICER, "resolve", 900.0))
        for event in batch:
            state = evolve(state, event)
        for who, action, dt in steps:
            decided = decide_response(
                state,
                Respond(incident_id=opened.incident_id, responder=who, action=action, at=at(t0 + dt), category="help"),
            )  # type: ignore[arg-type]
            batch += decided
            for event in decided:
                state = evolve(state, event)
        events += batch
    return events


def subject_of(event: Event) -> str:
    if isinstance(event, LineEvent):
        return line_subject(event.line)
    assert isinstance(event, IncidentEvent)
    if isinstance(event, RespondersNotified):
        return notice_subject(event.incident_id)
    return incident_subject(event.incident_id)


def recorded(events: list[Event]) -> list[Recorded]:
    out = [
        Recorded(seq=seq, subject=subject_of(event), event=event, msg_id=None, time=at())
        for seq, event in enumerate(events, start=1)
    ]
    return [r for r in out if isinstance(r.event, IncidentEvent)]


def snapshot(db: Database) -> tuple[list[tuple[object, ...]], ...]:
    conn = db.connect()
    try:
        return (
            conn.query("SELECT * FROM incidents ORDER BY id"),
            conn.query("SELECT * FROM incident_responders ORDER BY incident_id, phone"),
            conn.query("SELECT SUM(events) FROM incidents"),
        )
    finally:
        conn.close()


def test_batches_apply_exactly_once_whatever_overlaps(database: Database) -> None:
    projection = IncidentsProjection()
    recs = recorded(incident_events(3))
    conn = database.connect()
    ensure_schema(conn, projection)
    apply_batch(conn, projection, recs[:20])
    apply_batch(conn, projection, recs[10:30])
    apply_batch(conn, projection, recs)
    apply_batch(conn, projection, recs[5:8])
    once = snapshot(database)
    assert checkpoint(conn, projection.name) == recs[-1].seq
    assert once[2] == [(len(recs),)]

    fresh = Database.sqlite(database.path.parent / "fresh.db") if database.dialect == "sqlite" else None
    if fresh is not None:
        other = fresh.connect()
        ensure_schema(other, projection)
        apply_batch(other, projection, recs)
        assert snapshot(fresh) == once
    rows = conn.query("SELECT status, covered, category, urgency, first_accept_role FROM incidents ORDER BY id")
    assert rows == [("resolved", 1, "help", 1, "officer")] * 3


def test_a_failure_mid_batch_leaves_nothing_behind(database: Database) -> None:
    projection = IncidentsProjection()
    recs = recorded(incident_events(2))
    conn = database.connect()
    ensure_schema(conn, projection)
    apply_batch(conn, projection, recs[:5])
    before = snapshot(database)

    class Boom(Exception):
        pass

    class Failing(IncidentsProjection):
        def apply_many(self, conn: Connection, recs: Sequence[Recorded], *, continued: bool = False) -> None:
            conn.execute("UPDATE incidents SET urgency = 99")
            raise Boom

    with pytest.raises(Boom):
        apply_batch(conn, Failing(), recs)
    assert snapshot(database) == before
    assert checkpoint(conn, projection.name) == recs[4].seq
    apply_batch(conn, projection, recs)
    assert snapshot(database)[2] == [(len(recs),)]


def test_two_writers_sharing_one_database_apply_each_event_once(database: Database) -> None:
    projection = IncidentsProjection()
    recs = recorded(incident_events(6))
    setup = database.connect()
    ensure_schema(setup, projection)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        conn = database.connect()
        try:
            for start in range(offset, len(recs), 7):
                apply_batch(conn, projection, recs[: start + 7])
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert snapshot(database)[2] == [(len(recs),)]


def test_response_time_percentiles(database: Database) -> None:
    projection = IncidentsProjection()
    conn = database.connect()
    ensure_schema(conn, projection)
    apply_batch(conn, projection, recorded(incident_events(4, accept_after=10)))
    report = queries.response_times(conn, villages=frozenset({"dongshan"}))
    first_accept = report.measures["time_to_first_accept"]
    assert report.incidents == 4
    assert (first_accept.count, first_accept.p50, first_accept.p90) == (4, 11.5, 12.7)
    covered = report.measures["time_to_covered"]
    assert covered.p50 == 21.5
    assert report.measures["time_to_resolve"].p50 == 900.0
    assert queries.response_times(conn, villages=frozenset({"elsewhere"})).incidents == 0
    later = queries.response_times(conn, since=at(150))
    assert later.incidents == 1
    listed = queries.list_incidents(conn, villages=frozenset({"dongshan"}), status="resolved", limit=2)
    line = "group.dongshan.1"
    assert [i["incident_id"] for i in listed] == [incident_id_for(line, 3), incident_id_for(line, 2)]


async def test_live_runner_and_replay_agree(nc: NATS, database: Database) -> None:
    await provision(nc)
    store = EventStore(nc)
    events = incident_events(5, resolve=False)
    for i, event in enumerate(events):
        await store.append([Outgoing(subject_of(event), event, f"t:{i}")])
    runner = ProjectionRunner(nc, database, IncidentsProjection())
    await runner.start()
    last = await store.stream_last_seq()
    await runner.wait_for(last, timeout=20)
    await runner.stop()
    live = snapshot(database)
    assert len(live[0]) == 5 and all(row[9] == "on_scene" for row in live[0])

    applied = await rebuild(nc, database, IncidentsProjection(), progress=False)
    assert applied == len([e for e in events if isinstance(e, IncidentEvent)])
    assert snapshot(database) == live
    conn = database.connect()
    assert checkpoint(conn, "incidents_v1") == last
    assert queries.open_incident_count(conn) == 5
