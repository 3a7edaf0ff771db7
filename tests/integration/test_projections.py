"""The projection contract, run against SQLite and PostgreSQL alike: exactly once, all or nothing,
several writers, live equals replay, the roster fold, versions that take over, lag."""

from __future__ import annotations

import gc
import random
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from dispatch.domain.directory import Directory
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
from dispatch.domain.roster import parse_roster, plan_import
from dispatch.events.model import (
    DeliveryFailed,
    DeliverySucceeded,
    Event,
    GroupDissolved,
    GroupFormed,
    IncidentEvent,
    LineEvent,
    MemberBound,
    MemberRenamed,
    MemberUnbound,
    Reached,
    RespondersNotified,
    RoleAssigned,
    Unreached,
)
from dispatch.events.subjects import incident_subject, line_subject, notice_subject
from dispatch.projections import queries, roster
from dispatch.projections.incidents import INCIDENTS, RESPONDERS, IncidentsProjection
from dispatch.projections.rebuild import rebuild
from dispatch.projections.roster import RosterProjection
from dispatch.projections.runner import (
    CHECKPOINTS_DDL,
    Projection,
    ProjectionRunner,
    active_version,
    apply_batch,
    checkpoint,
    drop_retired,
    ensure_schema,
    state_of,
    take_over,
)
from dispatch.projections.sql import Connection, Database
from dispatch.reports.common import Scope, Zones
from dispatch.reports.response_times import response_times
from dispatch.store.eventstore import EventStore, Outgoing, Recorded
from dispatch.store.provision import provision
from tests import history
from tests.rosters import ROSTER
from tests.support import eventually
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
    if isinstance(event, (RespondersNotified, DeliverySucceeded, DeliveryFailed)):
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
            conn.query(f"SELECT * FROM {INCIDENTS} ORDER BY id"),
            conn.query(f"SELECT * FROM {RESPONDERS} ORDER BY incident_id, phone"),
            conn.query(f"SELECT SUM(events) FROM {INCIDENTS}"),
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
    rows = conn.query(f"SELECT status, covered, category, urgency, first_accept_role FROM {INCIDENTS} ORDER BY id")
    assert rows == [("resolved", 1, "help", 1, "officer")] * 3
    cached = [r for r in projection._rows.values() if r is not None]
    cached += [r for people in projection._responders.values() for r in people.values()]
    assert len(cached) > 3 and not any(gc.is_tracked(r) for r in cached), "the cyclic GC never walks the cache"


def test_rows_the_cache_forgot_are_read_back_and_fold_the_same(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A row cache of 2 incidents, with five incidents interleaved so that every batch needs rows it
    has forgotten: the tables are the ones a cache holding everything makes (both on SQLite, so the
    snapshots compare value for value)."""
    recs = recorded(incident_events(5, accept_after=5))
    recs.sort(key=lambda r: (r.event.at, r.seq))  # answers of the early incidents after later openings
    recs = [replace(r, seq=seq) for seq, r in enumerate(recs, start=1)]
    database = Database.sqlite(tmp_path / "forgetful.db")
    whole = Database.sqlite(tmp_path / "whole.db")
    reference = whole.connect()
    ensure_schema(reference, IncidentsProjection())
    apply_batch(reference, IncidentsProjection(), recs)

    monkeypatch.setattr("dispatch.projections.incidents.CACHE_INCIDENTS", 2)
    projection = IncidentsProjection()
    conn = database.connect()
    ensure_schema(conn, projection)
    position = None
    for start in range(0, len(recs), 3):
        position = apply_batch(conn, projection, recs[start : start + 3], previous=position)
        assert len(projection._rows) <= 2
    assert snapshot(database) == snapshot(whole)


def test_a_first_attempt_outcome_with_handed_at_makes_the_rows_its_notice_would(database: Database) -> None:
    """Old logs: a notice per job, then its outcome; new ones: the outcome carries handed_at."""
    old_style: list[Event] = []
    new_style: list[Event] = []
    for event in incident_events(3):
        if not isinstance(event, RespondersNotified):
            old_style.append(event)
            new_style.append(event)
            continue
        reached = tuple(Reached(phone=p, address=p) for p in event.phones[:-1])
        lost = (Unreached(phone=event.phones[-1], address=event.phones[-1], kind="permanent", reason="HTTP 404"),)
        common = {"at": event.at + timedelta(seconds=2), "incident_id": event.incident_id, "channel": event.channel}
        old_style += [
            event,
            DeliverySucceeded(**common, round=event.round, targets=reached),
            DeliveryFailed(**common, round=event.round, failures=lost),
        ]
        new_style += [
            DeliverySucceeded(**common, round=event.round, targets=reached, handed_at=event.at),
            DeliveryFailed(**common, round=event.round, failures=lost, handed_at=event.at),
        ]
    projection = IncidentsProjection()
    conn = database.connect()
    ensure_schema(conn, projection)
    incident_columns = "status, first_notified_at, first_delivered_at, first_accept_at, covered_at"
    responder_columns = "phone, recipient, notified_at, delivered_at, failed_kind, accepted_at"

    def rows() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        return (
            conn.query(f"SELECT {incident_columns} FROM {INCIDENTS} ORDER BY id"),
            conn.query(f"SELECT incident_id, {responder_columns} FROM {RESPONDERS} ORDER BY incident_id, phone"),
        )

    apply_batch(conn, projection, recorded(old_style))
    expected = rows()
    conn.execute(f"DELETE FROM {INCIDENTS}")
    conn.execute(f"DELETE FROM {RESPONDERS}")
    apply_batch(conn, IncidentsProjection(), [replace(r, seq=r.seq + 10_000) for r in recorded(new_style)])
    assert rows() == expected
    assert all(r[3] is not None for r in expected[1] if r[2]), "every recipient notified"
    assert {r[5] for r in expected[1] if r[2]} == {None, "permanent"}


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
            conn.execute(f"UPDATE {INCIDENTS} SET urgency = 99")
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


def test_processes_creating_the_schema_at_once_all_succeed(database: Database) -> None:
    """A service and a read-side worker starting together both create the tables."""
    errors: list[BaseException] = []
    ready = threading.Barrier(6)

    def create(projection: Projection) -> None:
        try:
            ready.wait(timeout=30)
            conn = database.connect()
            try:
                ensure_schema(conn, projection)
            finally:
                conn.close()
        except BaseException as exc:
            errors.append(exc)

    projections = (IncidentsProjection, RosterProjection) * 3
    threads = [threading.Thread(target=create, args=(cls(),), daemon=True) for cls in projections]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    conn = database.connect()
    try:
        names = {row[0] for row in conn.query("SELECT name FROM projection_versions")}
    finally:
        conn.close()
    assert names == {IncidentsProjection().name, RosterProjection().name}


def test_response_time_percentiles(database: Database) -> None:
    projection = IncidentsProjection()
    conn = database.connect()
    ensure_schema(conn, projection)
    apply_batch(conn, projection, recorded(incident_events(4, accept_after=10)))
    zones, now = Zones(), at(3600).timestamp()
    report = response_times(conn, Scope(villages=frozenset({"dongshan"})), zones, now=now)
    first_accept = report["measures"]["time_to_first_accept"]
    assert report["incidents"] == 4
    assert (first_accept["count"], first_accept["p50"], first_accept["p90"]) == (4, 11.5, 12.7)
    assert report["measures"]["time_to_covered"]["p50"] == 21.5
    assert report["measures"]["time_to_resolve"]["p50"] == 900.0
    assert response_times(conn, Scope(villages=frozenset({"elsewhere"})), zones, now=now)["incidents"] == 0
    assert response_times(conn, Scope(since=at(150).timestamp()), zones, now=now)["incidents"] == 1
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
    assert checkpoint(conn, "incidents_v5") == last
    assert queries.open_incident_count(conn) == 5


# --- the roster read model -------------------------------------------------------------------------


def roster_rows(conn: Connection) -> tuple[set[tuple[object, ...]], set[tuple[object, ...]], set[tuple[object, ...]]]:
    groups = {tuple(r) for r in conn.query(f"SELECT village, grp, dissolved FROM {roster.GROUPS}")}
    members = {tuple(r) for r in conn.query(f"SELECT village, grp, phone, name, role FROM {roster.MEMBERS}")}
    desks = {tuple(r) for r in conn.query(f"SELECT village, phone, name FROM {roster.DUTY_DESKS}")}
    return groups, members, desks


def test_roster_read_model_is_the_directory_fold(database: Database) -> None:
    directory, events = history.roster(ROSTER, at())
    changed = ROSTER.replace("dongshan,1,13800000007,household,杨淑芬\n", "").replace(
        "13800000006,household,陈永福", "13800000006,household,陈永富"
    )
    changed = changed.replace("dongshan,2,13800000011,household,孙大山", "dongshan,2,13800000011,leader,孙大山")
    changed = changed.replace("dongshan,2,13800000018,leader,郑春生", "dongshan,2,13800000018,household,郑春生")
    plan = plan_import(directory, parse_roster(changed), at(60))
    for change in plan.changes:
        for event in change.events:
            events.append(event)
            directory.apply(event, len(events))
    events.append(GroupDissolved(at=at(120), village="dongshan", group="2"))
    directory.apply(events[-1], len(events))
    events.append(history.village_settings("dongshan", at(130), time_zone="Asia/Urumqi", ack_deadline_s=90.0))
    directory.apply(events[-1], len(events))

    projection = RosterProjection()
    conn = database.connect()
    ensure_schema(conn, projection)
    recs = history.recorded(events)
    apply_batch(conn, projection, recs[:7])
    apply_batch(conn, projection, recs)
    groups, members, desks = roster_rows(conn)
    assert groups == {(g.village, g.group, int(g.dissolved)) for g in directory.groups.values()}
    assert members == {
        (g.village, g.group, p.phone, p.name, p.role) for g in directory.groups.values() for p in g.members.values()
    }
    assert ("dongshan", "1", "+8613800000006", "陈永富", "household") in members
    assert not any(m[2] == "+8613800000007" for m in members)
    assert desks == {(v, d.phone, d.name) for v, s in directory.villages.items() for d in s.duty_desks.values()}
    assert conn.one(f"SELECT time_zone, ack_deadline_s FROM {roster.VILLAGES} WHERE village = 'dongshan'") == (
        "Asia/Urumqi",
        90.0,
    )


# --- versions --------------------------------------------------------------------------------------


class Counts:
    """A tiny projection family: events per type, in `counts_v<version>`."""

    family = "counts"
    filter_subjects: tuple[str, ...] = ("dispatch.evt.incident.>",)
    server_filter = False
    legacy: tuple[tuple[str, int, tuple[str, ...]], ...] = ()

    def __init__(self, version: int) -> None:
        self.version = version

    @property
    def name(self) -> str:
        return f"counts_v{self.version}"

    def tables(self) -> Sequence[str]:
        return (self.name,)

    def ddl(self) -> Sequence[str]:
        return (f"CREATE TABLE IF NOT EXISTS {self.name} (kind TEXT PRIMARY KEY, n INTEGER NOT NULL)",)

    def indexes(self) -> Sequence[str]:
        return (f"CREATE INDEX IF NOT EXISTS {self.name}_n ON {self.name} (n)",)

    def apply_many(self, conn: Connection, recs: Sequence[Recorded], *, continued: bool = False) -> None:
        for rec in recs:
            conn.execute(
                f"INSERT INTO {self.name} (kind, n) VALUES (?, 1) "
                f"ON CONFLICT (kind) DO UPDATE SET n = {self.name}.n + 1",
                (type(rec.event).__name__,),
            )

    def forget(self) -> None:
        return None


class GatedRunner(ProjectionRunner):
    """Holds each batch until `gate` is set (outside the transaction: SQLite has one writer)."""

    gate = threading.Event()

    def _apply(self, batch: list[Recorded]) -> int:
        assert self.gate.wait(30)
        return super()._apply(batch)


async def append_all(store: EventStore, events: Sequence[Event], prefix: str) -> int:
    seq = 0
    for i, event in enumerate(events):
        [seq] = await store.append([Outgoing(history.subject_of(event), event, f"{prefix}:{i}")])
    return seq


def tables_named(conn: Connection, prefix: str) -> set[str]:
    if conn.dialect == "sqlite":
        rows = conn.query("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = conn.query("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    return {str(r[0]) for r in rows if str(r[0]).startswith(prefix)}


def indexes_named(conn: Connection, prefix: str) -> set[str]:
    if conn.dialect == "sqlite":
        rows = conn.query("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    else:
        rows = conn.query("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    return {str(r[0]) for r in rows if str(r[0]).startswith(prefix) and not str(r[0]).endswith("_pkey")}


async def test_a_new_version_builds_beside_the_old_one_and_takes_over_when_caught_up(
    nc: NATS, database: Database
) -> None:
    await provision(nc)
    store = EventStore(nc)
    await append_all(store, incident_events(3), "a")
    old = ProjectionRunner(nc, database, Counts(1), linger=0.01)
    await old.start()
    await old.wait_for(await store.stream_last_seq(), timeout=20)
    conn = database.connect()
    assert old.active and state_of(conn, "counts_v1") == "active"

    gate = threading.Event()
    new = GatedRunner(nc, database, Counts(2), linger=0.01, retired_grace=3600)
    new.gate = gate
    await new.start()
    assert not new.active and state_of(conn, "counts_v2") == "building"
    assert indexes_named(conn, "counts_v") == {"counts_v1_n"}, "a building version is filled without its indexes"
    await append_all(store, incident_events(1, resolve=False)[:1], "b")
    await old.wait_for(await store.stream_last_seq(), timeout=20)
    assert state_of(conn, "counts_v1") == "active", "the old version serves until the new one has caught up"
    assert "building" in new.progress() or new.progress().startswith("counts_v2 0%")

    gate.set()
    await new.wait_for(await store.stream_last_seq(), timeout=20)
    await eventually(lambda: new.active, timeout=20)
    assert state_of(conn, "counts_v2") == "active" and state_of(conn, "counts_v1") == "retired"
    assert active_version(conn, "counts") == "counts_v2"
    assert indexes_named(conn, "counts_v2") == {"counts_v2_n"}, "indexed as it took over"
    conn.execute("DROP INDEX counts_v2_n")
    ensure_schema(conn, Counts(2))
    assert indexes_named(conn, "counts_v2") == {"counts_v2_n"}, "an active version gets an index it lacks at start"
    assert conn.query("SELECT kind, n FROM counts_v2 ORDER BY kind") == conn.query(
        "SELECT kind, n FROM counts_v1 ORDER BY kind"
    ), "both versions folded the same log"
    assert tables_named(conn, "counts_v") == {"counts_v1", "counts_v2"}, "retired tables stay for the grace period"

    assert not take_over(conn, Counts(1)), "an old version never takes over from a newer one"
    assert active_version(conn, "counts") == "counts_v2"
    await old.stop()
    assert drop_retired(conn, "counts", older_than=0) == ["counts_v1"]
    assert tables_named(conn, "counts_v") == {"counts_v2"}
    assert checkpoint(conn, "counts_v1") == 0
    await new.stop()


async def test_incidents_v3_retires_the_tables_of_version_1(nc: NATS, database: Database) -> None:
    conn = database.connect()
    conn.execute(CHECKPOINTS_DDL)
    conn.execute("CREATE TABLE incidents (id TEXT PRIMARY KEY)")
    conn.execute("CREATE TABLE incident_responders (incident_id TEXT)")
    conn.execute("INSERT INTO projection_checkpoints (name, position, updated_at) VALUES ('incidents_v1', 7, 0)")
    await provision(nc)
    runner = ProjectionRunner(nc, database, IncidentsProjection(), retired_grace=0)
    await runner.start()
    await eventually(lambda: runner.active, timeout=20)
    await runner.stop()
    assert state_of(conn, "incidents_v1") is None, "dropped once retired (no grace here)"
    assert tables_named(conn, "incident") == {INCIDENTS, RESPONDERS}


async def test_lag_is_what_the_projection_has_not_applied_yet(nc: NATS, database: Database) -> None:
    await provision(nc)
    store = EventStore(nc)
    events = incident_events(4)
    last = await append_all(store, events, "lag")
    gate = threading.Event()
    runner = GatedRunner(nc, database, Counts(1), linger=0.01)
    runner.gate = gate
    await runner.start()
    await eventually(lambda: runner._received == last, timeout=20)
    assert runner.lag() == last, "everything received, nothing applied"
    gate.set()
    await runner.wait_for(last, timeout=20)
    assert runner.lag() == 0
    gate.clear()
    more = incident_events(1)[:3]
    last = await append_all(store, more, "lag2")
    await eventually(lambda: runner.lag() == 3, timeout=20)
    gate.set()
    await runner.wait_for(last, timeout=20)
    assert runner.lag() == 0
    await runner.stop()


def test_roster_batches_fold_like_the_directory_however_they_are_cut(database: Database) -> None:
    """Random binds, unbinds, renames, role changes, dissolutions and re-formations, cut into random
    batches: the rows equal the in-memory directory's fold of the same events."""
    rng = random.Random(7)
    phones = [f"+86138000000{i:02d}" for i in range(12)]
    conn = database.connect()
    projection = RosterProjection()
    ensure_schema(conn, projection)
    directory = Directory()
    events: list[Event] = []
    for step in range(400):
        group = rng.choice(["1", "2", "3"])
        phone = rng.choice(phones)
        kind = rng.random()
        t = at(step)
        if kind < 0.4:
            event: Event = MemberBound(
                at=t, village="v", group=group, phone=phone, name=f"n{step}", role=rng.choice(["household", "leader"])
            )
        elif kind < 0.55:
            event = MemberUnbound(at=t, village="v", group=group, phone=phone)
        elif kind < 0.7:
            event = MemberRenamed(at=t, village="v", group=group, phone=phone, name=f"r{step}")
        elif kind < 0.85:
            event = RoleAssigned(at=t, village="v", group=group, phone=phone, role=rng.choice(["officer", "assistant"]))
        elif kind < 0.93:
            event = GroupDissolved(at=t, village="v", group=group)
        else:
            event = GroupFormed(at=t, village="v", group=group)
        events.append(event)
        directory.apply(event, len(events))
    recs = history.recorded(events)
    start = 0
    while start < len(recs):
        end = start + rng.randint(1, 40)
        apply_batch(conn, projection, recs[:end])
        start = end
    groups, members, _ = roster_rows(conn)
    assert groups == {(g.village, g.group, int(g.dissolved)) for g in directory.groups.values()}
    assert members == {
        (g.village, g.group, p.phone, p.name, p.role) for g in directory.groups.values() for p in g.members.values()
    }
