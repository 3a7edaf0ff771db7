"""The report contract, run against SQLite and PostgreSQL alike: response times and breaches,
history filters, statistics with 环比/同比 in the village's time zone, group readiness."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from dispatch.domain.incident import parse_quorum
from dispatch.domain.timezones import DEFAULT_TIME_ZONE, zone
from dispatch.events.model import AbsenceEnded, AbsenceSet, Event
from dispatch.projections.incidents import IncidentsProjection
from dispatch.projections.roster import RosterProjection
from dispatch.projections.runner import apply_batch, ensure_schema
from dispatch.projections.sql import Connection, Database
from dispatch.reports.common import Scope, load_zones
from dispatch.reports.history import history
from dispatch.reports.periods import parse_when
from dispatch.reports.readiness import readiness
from dispatch.reports.response_times import response_times
from dispatch.reports.stats import stats
from tests.history import Alarm, Histories, recorded, roster, village_settings

ROSTER = """village,group,phone,role,name
dongshan,1,13800000001,household,张桂兰
dongshan,1,13800000002,household,李建国
dongshan,1,13800000003,household,王秀英
dongshan,1,13800000004,household,@SUM(1+1)
dongshan,1,13800000008,leader,黄志强
dongshan,1,13900000001,assistant,周丽
dongshan,1,13900000009,officer,吴警官
dongshan,2,13800000011,household,孙大山
dongshan,2,13800000018,leader,郑春生
dongshan,2,13900000009,officer,吴警官
dongshan,3,13800000021,household,钱多多
dongshan,3,13800000028,leader,冯大力
dongshan,3,13900000009,officer,吴警官
xishan,1,13700000001,household,甲
xishan,1,13700000008,leader,乙
xishan,1,13600000009,officer,丙
dongshan,,073184512345,duty,城关派出所值班室
"""
OFFICER, LEADER1, ASSISTANT1, LEADER2 = "+8613900000009", "+8613800000008", "+8613900000001", "+8613800000018"
T = datetime(2025, 6, 1, 20, 0, tzinfo=UTC)
DONGSHAN = frozenset({"dongshan"})


def load(database: Database, events: Sequence[Event]) -> Connection:
    conn = database.connect()
    projections = (IncidentsProjection(), RosterProjection())
    recs = recorded(events)
    for projection in projections:
        ensure_schema(conn, projection)
        for start in range(0, len(recs), 9):
            apply_batch(conn, projection, recs[: start + 9])
    return conn


def four_incidents(now: datetime) -> list[Event]:
    """A: fine. B: covered late, arrived late. C: cancelled before its deadline. D: open, uncovered."""
    directory, events = roster(ROSTER, T - timedelta(days=30))
    h = Histories(directory)
    day = timedelta(days=1)
    events += h.many(
        [
            Alarm(
                "+8613800000001",
                T,
                accepts=[(OFFICER, 30), (LEADER1, 40)],
                arrive=(OFFICER, 600),
                resolve=(OFFICER, 900, "dispute"),
            ),
            Alarm(
                "+8613800000002",
                T + day,
                accepts=[(OFFICER, 100), (LEADER1, 120)],
                arrive=(OFFICER, 1620),
                resolve=(OFFICER, 2000, "help"),
            ),
            Alarm("+8613800000011", T + day + timedelta(hours=1), cancel=("+8613800000011", 30, "misdial")),
            Alarm("+8613800000011", now - timedelta(minutes=10)),
        ]
    )
    return events


def test_response_times_overall_and_breaches(database: Database) -> None:
    now = datetime.now(UTC)
    conn = load(database, four_incidents(now))
    zones = load_zones(conn)
    report = response_times(conn, Scope(villages=DONGSHAN), zones, now=now.timestamp())
    assert (report["incidents"], report["covered"], report["ack_breached"], report["arrival_breached"]) == (4, 2, 2, 1)
    accept = report["measures"]["time_to_first_accept"]
    assert (accept["count"], accept["p50"], accept["p90"]) == (2, 65.0, 93.0)
    assert report["measures"]["time_to_covered"]["p50"] == 80.0
    assert report["measures"]["time_to_arrival"]["p50"] == 1110.0
    assert report["measures"]["time_to_resolve"]["count"] == 2, "a cancellation is not a resolution"
    assert report["measures"]["time_to_accept_leader"]["p50"] == 80.0
    assert report["measures"]["time_to_accept_assistant"]["count"] == 0
    assert report["rows"] == []
    nobody = response_times(conn, Scope(villages=frozenset()), zones, now=now.timestamp())
    assert nobody["incidents"] == 0 and nobody["measures"]["time_to_first_accept"]["p50"] is None


def test_response_times_by_group_officer_and_day_in_the_village_zone(database: Database) -> None:
    now = datetime.now(UTC)
    events = four_incidents(now)
    conn = load(database, events)
    zones = load_zones(conn)
    rows = response_times(conn, Scope(villages=DONGSHAN), zones, now=now.timestamp(), by=["group"])["rows"]
    summary = {r["group"]: (r["incidents"], r["covered"], r["ack_breached"], r["arrival_breached"]) for r in rows}
    assert summary == {"1": (2, 2, 1, 1), "2": (2, 0, 1, 0)}

    by_officer = response_times(conn, Scope(villages=DONGSHAN), zones, now=now.timestamp(), by=["officer"])["rows"]
    assert [(r["officer"], r["incidents"]) for r in by_officer] == [({"phone": "+86139****0009", "name": "吴警官"}, 4)]
    revealed = response_times(conn, Scope(villages=DONGSHAN), zones, now=now.timestamp(), by=["officer"], reveal=True)[
        "rows"
    ]
    assert revealed[0]["officer"]["phone"] == OFFICER

    daily = response_times(
        conn,
        Scope(villages=DONGSHAN, until=(T + timedelta(days=3)).timestamp()),
        zones,
        now=now.timestamp(),
        period="day",
    )["rows"]
    assert [(r["period"], r["incidents"]) for r in daily] == [("2025-06-02", 1), ("2025-06-03", 2)], (
        "20:00 UTC is 04:00 the next day in Asia/Shanghai"
    )
    london = load(database, [*events, village_settings("dongshan", now, time_zone="Europe/London")])
    daily = response_times(
        london,
        Scope(villages=DONGSHAN, until=(T + timedelta(days=3)).timestamp()),
        load_zones(london),
        now=now.timestamp(),
        by=["village"],
        period="day",
    )["rows"]
    assert [(r["village"], r["period"], r["incidents"]) for r in daily] == [
        ("dongshan", "2025-06-01", 1),
        ("dongshan", "2025-06-02", 2),
    ]


def test_history_filters_pages_and_local_times(database: Database) -> None:
    now = datetime.now(UTC)
    conn = load(database, four_incidents(now))
    zones = load_zones(conn)

    def ids(**filters: object) -> list[tuple[str | None, str]]:
        report = history(conn, Scope(villages=DONGSHAN, **filters), zones)  # type: ignore[arg-type]
        return [(r["group"], r["status"]) for r in report["rows"]]

    assert ids() == [("2", "notifying"), ("2", "cancelled"), ("1", "resolved"), ("1", "resolved")]
    assert ids(group="2") == [("2", "notifying"), ("2", "cancelled")]
    assert ids(caller="+8613800000011") == [("2", "notifying"), ("2", "cancelled")]
    assert ids(status="open") == [("2", "notifying")]
    assert ids(status="resolved", category="help") == [("1", "resolved")]
    assert ids(since=(T + timedelta(hours=12)).timestamp(), until=(T + timedelta(days=2)).timestamp()) == [
        ("2", "cancelled"),
        ("1", "resolved"),
    ]
    page = history(conn, Scope(villages=DONGSHAN), zones, limit=2, offset=1)
    assert (page["total"], page["count"], page["offset"]) == (4, 2, 1)
    first = history(conn, Scope(villages=DONGSHAN, category="dispute"), zones)["rows"][0]
    assert first["raised_at"] == "2025-06-02T04:00:00+08:00" and first["time_zone"] == DEFAULT_TIME_ZONE
    assert first["closed_at"] == "2025-06-02T04:15:00+08:00"
    assert (first["time_to_first_accept"], first["time_to_covered"], first["time_to_arrival"]) == (30.0, 40.0, 600.0)
    assert first["caller"] == "+86138****0001" and first["caller_name"] == "张桂兰"
    assert history(conn, Scope(villages=DONGSHAN), zones, reveal=True)["rows"][-1]["caller"] == "+8613800000001"
    assert history(conn, Scope(villages=frozenset({"xishan"})), zones)["total"] == 0


def month_history() -> list[Event]:
    directory, events = roster(ROSTER, datetime(2025, 1, 1, tzinfo=UTC))
    h = Histories(directory)

    def resolved(caller: str, at: datetime, category: str) -> Alarm:
        return Alarm(caller, at, accepts=[(OFFICER, 20)], resolve=(OFFICER, 60, category))

    g1, g2 = "+8613800000001", "+8613800000011"
    return events + h.many(
        [
            resolved(g1, datetime(2025, 11, 3, 2, tzinfo=UTC), "dispute"),
            resolved(g1, datetime(2025, 11, 20, 2, tzinfo=UTC), "dispute"),
            resolved(g1, datetime(2026, 10, 10, 2, tzinfo=UTC), "dispute"),
            resolved(g1, datetime(2026, 10, 31, 17, tzinfo=UTC), "dispute"),
            resolved(g1, datetime(2026, 11, 5, 2, tzinfo=UTC), "dispute"),
            resolved(g1, datetime(2026, 11, 6, 2, tzinfo=UTC), "dispute"),
            resolved(g1, datetime(2026, 11, 7, 2, tzinfo=UTC), "help"),
            Alarm(g1, datetime(2026, 11, 8, 2, tzinfo=UTC), cancel=(g1, 10, "misdial")),
            Alarm(g1, datetime(2026, 11, 9, 2, tzinfo=UTC), cancel=(OFFICER, 30, "drill")),
            Alarm(g2, datetime(2026, 11, 10, 2, tzinfo=UTC)),
        ]
    )


def test_statistics_by_category_with_period_and_year_over_year_change(database: Database) -> None:
    conn = load(database, month_history())
    zones = load_zones(conn)
    shanghai = zones.default
    report = stats(
        conn,
        Scope(villages=DONGSHAN),
        zones,
        since=parse_when("2026-11-01", shanghai),
        until=parse_when("2026-12-01", shanghai),
        period="month",
    )
    rows = {r["category"]: r for r in report["rows"]}
    assert [r["period"] for r in report["rows"]] == ["2026-11"] * 10
    dispute = rows["dispute"]
    assert (dispute["count"], dispute["previous"], dispute["last_year"]) == (3, 1, 2), (
        "17:00 UTC on 31 October is 1 November in Shanghai"
    )
    assert (dispute["change_pct"], dispute["yoy_pct"]) == (200.0, 50.0)
    assert (rows["help"]["count"], rows["help"]["change_pct"], rows["help"]["yoy_pct"]) == (1, None, None)
    assert (rows["cancelled"]["count"], rows["drill"]["count"], rows["open"]["count"]) == (1, 1, 1)
    assert rows["fire"]["count"] == 0
    [total] = report["totals"]
    assert (total["count"], total["previous"], total["last_year"]) == (6, 1, 2), "drills are not incidents"
    assert (total["change_pct"], total["yoy_pct"], total["partial"]) == (500.0, 200.0, False)

    weekly = stats(
        conn,
        Scope(villages=DONGSHAN, category="dispute"),
        zones,
        since=parse_when("2026-11-02", shanghai),
        until=parse_when("2026-11-16", shanghai),
        period="week",
    )
    assert [(r["period"], r["count"], r["previous"]) for r in weekly["rows"]] == [
        ("2026-W45", 2, 1),
        ("2026-W46", 0, 2),
    ]
    assert weekly["categories"] == ["dispute"]


def test_readiness_finds_silent_unreachable_uncoverable_and_quiet(database: Database) -> None:
    now = datetime.now(UTC)
    directory, events = roster(ROSTER, now - timedelta(days=200))
    h = Histories(directory)
    answering = ["+8613800000001", "+8613800000002", "+8613800000004"]
    alarms = []
    for i, caller in enumerate(answering):
        others = [p for p in answering if p != caller]
        alarms.append(
            Alarm(
                caller,
                now - timedelta(days=10 - i),
                accepts=[(OFFICER, 20), (LEADER1, 30)],
                declines=[(p, 25) for p in others] + [(ASSISTANT1, 26)],
                resolve=(OFFICER, 300, "help"),
            )
        )
    alarms.append(
        Alarm(
            "+8613800000011",
            now - timedelta(days=5),
            accepts=[(OFFICER, 20)],
            failures={LEADER2: "permanent"},
            cancel=(OFFICER, 200, "drill"),
        )
    )
    alarms.append(Alarm("+8613700000001", now - timedelta(days=120, hours=1), accepts=[("+8613600000009", 10)]))
    events += h.many(alarms)
    conn = load(database, events)
    zones = load_zones(conn)
    report = readiness(conn, None, zones, parse_quorum("officer,leader|assistant"), now=now.timestamp(), last=3)

    assert [(m["group"], m["phone"], m["name"], m["alarms"]) for m in report["silent_members"]] == [
        ("1", "+86138****0003", "王秀英", 3)
    ]
    assert [(m["group"], m["phone"], m["failure"]) for m in report["unreachable_members"]] == [
        ("2", "+86138****0018", "permanent")
    ]
    assert report["groups_without_quorum"] == [
        {
            "village": "dongshan",
            "group": "2",
            "missing": [{"roles": "leader|assistant", "roles_zh": "联防组长或警务助理", "why": "out_of_reach"}],
        }
    ]
    quiet = {(q["village"], q["group"]): q for q in report["quiet_groups"]}
    assert set(quiet) == {("dongshan", "3"), ("xishan", "1")}
    assert quiet[("dongshan", "3")]["last_alarm_at"] is None
    assert quiet[("xishan", "1")]["days_since"] == 120
    assert (report["groups"], report["members"]) == (4, 16)

    scoped = readiness(conn, DONGSHAN, zones, parse_quorum("officer,leader|assistant"), now=now.timestamp(), last=3)
    assert {(q["village"], q["group"]) for q in scoped["quiet_groups"]} == {("dongshan", "3")}
    drilled = readiness(
        conn, DONGSHAN, zones, parse_quorum("officer"), now=now.timestamp(), group="2", quiet_days=3, reveal=True
    )
    assert drilled["unreachable_members"][0]["phone"] == LEADER2
    assert drilled["groups_without_quorum"] == []
    assert drilled["quiet_groups"][0]["last_drill_at"] == drilled["quiet_groups"][0]["last_alarm_at"]
    strict = readiness(conn, DONGSHAN, zones, parse_quorum("officer,leader|assistant"), now=now.timestamp(), last=2)
    assert "+86138****0003" in {m["phone"] for m in strict["silent_members"]}


def test_readiness_sees_an_absence_from_its_start_to_its_end_excluded(database: Database) -> None:
    """Issue 23.1: the officer of dongshan away without substitute leaves its three groups short
    (why `absent`) exactly over [starts, until); xishan's officer away with xishan's leader standing
    in leaves xishan short of a leader (one person, rung once, as the officer); an ended absence is gone."""
    _, events = roster(ROSTER, T - timedelta(days=1))
    hour = timedelta(hours=1)
    events += [
        AbsenceSet(at=T - hour, phone=OFFICER, starts=T, until=T + hour),
        AbsenceSet(at=T - hour, phone="+8613600000009", starts=T, until=T + hour, substitute="+8613700000008"),
        AbsenceSet(at=T - hour, phone=LEADER2, starts=T - hour, until=T + hour),
        AbsenceEnded(at=T - hour / 2, phone=LEADER2),
    ]
    conn = load(database, events)
    zones = load_zones(conn)
    quorum = parse_quorum("officer,leader|assistant")

    def short(at: datetime) -> set[tuple[str, str, str]]:
        report = readiness(conn, None, zones, quorum, now=at.timestamp(), reveal=True)
        return {(g["village"], g["group"], m["why"]) for g in report["groups_without_quorum"] for m in g["missing"]}

    tick = timedelta(microseconds=1)
    assert short(T - timedelta(seconds=1)) == set()
    during = {("dongshan", "1", "absent"), ("dongshan", "2", "absent"), ("dongshan", "3", "absent")}
    assert short(T) == during | {("xishan", "1", "absent")}
    assert short(T + hour - tick * 1000) == during | {("xishan", "1", "absent")}
    assert short(T + hour) == set()
    report = readiness(conn, None, zones, quorum, now=T.timestamp(), reveal=True)
    absent = {(a["village"], a["group"], a["phone"]): a for a in report["absent_members"]}
    assert len(absent) == 4 and LEADER2 not in {a["phone"] for a in absent.values()}, "an ended absence is gone"
    west = absent[("xishan", "1", "+8613600000009")]
    assert west["substitute"] == "+8613700000008" and west["substitute_name"] == "乙" and west["substitute_rung"]


@pytest.mark.parametrize("text", ["2026-11-01", "2026-11-01T00:00:00", "2026-10-31T16:00:00Z"])
def test_times_given_without_a_zone_are_read_in_the_village_zone(text: str) -> None:
    assert parse_when(text, zone(DEFAULT_TIME_ZONE)) == datetime(2026, 10, 31, 16, tzinfo=UTC).timestamp()
