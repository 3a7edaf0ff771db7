"""Drills (issue 22.3) in the domain: a drill rings its whole group, every message says 演练 first,
its deadlines run but its escalation never goes past the station, it is counted apart from the
statistics, and a drill set for later starts once, at its time, unless called off."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain import drill as drills
from dispatch.domain.drill import CancelDrill, ScheduleDrill, StartDrill, drill_call_id
from dispatch.domain.errors import InvalidCommand, InvalidTransition, NotFound
from dispatch.domain.incident import (
    DEFAULT_QUORUM,
    DRILL,
    FireTimer,
    IncidentState,
    IncomingCall,
    Respond,
    alert_for,
    deadline_after,
    decide,
    evolve,
    open_incident,
    parse_quorum,
    route_call,
)
from dispatch.domain.messages import (
    alert_text_en_for,
    alert_text_for,
    describe,
    markdown_for,
    spoken_text_for,
)
from dispatch.events.model import (
    CATEGORIES,
    AlarmRaised,
    DrillCancelled,
    DrillStarted,
    Event,
    IncidentCancelled,
    IncidentEscalated,
    NeighboursAlerted,
    Person,
)
from dispatch.reports.stats import NOT_COUNTED, kind_of

from .fixtures import at, directory_with
from .test_incident import ASSISTANT, DUTY, LEADER, OFFICER, STATION, call

POLICY = parse_quorum(DEFAULT_QUORUM)
COMMAND_CENTRE = Person(phone="+8610110110", name="指挥中心", role="command_centre")


def drill_call(drill_id: str = "d1", village: str = "dongshan", group: str = "1") -> IncomingCall:
    return IncomingCall(
        call_id=drill_call_id(drill_id),
        caller_raw="",
        caller=None,
        callee="",
        channel="api",
        called_at=at(0),
        at=at(0),
        for_group=(village, group),
        caller_name="演练",
        origin=DRILL,
        opened_by="tok1",
        opened_by_name="吴警官",
    )


def drill_state() -> IncidentState:
    cmd = drill_call()
    route = route_call(directory_with(), cmd, POLICY, DUTY)
    state = evolve(None, open_incident(route, cmd, 0))
    assert state is not None
    return state


def real_state() -> IncidentState:
    cmd = call("+8613800000001")
    state = evolve(None, open_incident(route_call(directory_with(), cmd, POLICY, DUTY), cmd, 0))
    assert state is not None
    return state


def test_a_drill_rings_the_whole_group_on_a_line_of_its_own() -> None:
    state = drill_state()
    opened = state.opened
    assert isinstance(opened, AlarmRaised) and state.drill and opened.origin == "drill"
    group = directory_with().group("dongshan", "1")
    assert group is not None
    assert {p.phone for p in opened.recipients} == set(group.members), "every member, nobody is the caller"
    assert opened.line.startswith("report."), "never merged into the group's real incident"
    assert opened.opened_by_name == "吴警官"
    assert opened.quorum == POLICY


def test_every_message_of_a_drill_says_drill_first() -> None:
    state = drill_state()
    opened = state.opened
    neighbours, escalated = decide(state, FireTimer(incident_id=state.id, timer="ack"), at(61))
    assert isinstance(escalated, IncidentEscalated) and isinstance(neighbours, NeighboursAlerted)
    after = evolve(evolve(state, neighbours), escalated)
    assert after is not None
    cancel = decide(after, Respond(incident_id=state.id, responder=OFFICER, action="cancel", reason="drill"), at(90))
    assert isinstance(cancel[0], IncidentCancelled)
    for trigger, st_ in ((opened, None), (neighbours, after), (escalated, after), (cancel[0], after)):
        alert = alert_for(opened, trigger, st_)
        assert alert is not None and alert.drill
        assert alert_text_for(alert).startswith("【演练】"), alert_text_for(alert)
        assert spoken_text_for(alert).startswith("演练"), spoken_text_for(alert)
        assert markdown_for(alert, "http://c").startswith("### 【演练"), markdown_for(alert, "http://c")
        assert alert_text_en_for(alert).startswith("DRILL")
    raised = alert_for(opened, opened)
    assert raised is not None
    assert "联防演练" in alert_text_for(raised) and "吴警官" in alert_text_for(raised)
    assert describe(opened, {}).startswith("【演练】吴警官 发起")
    real = alert_for(real_state().opened, real_state().opened)
    assert real is not None and not real.drill and "演练" not in alert_text_for(real)


def test_a_drills_escalate_deadline_stops_at_the_station() -> None:
    state = drill_state()
    both = decide(state, FireTimer(incident_id=state.id, timer="escalate", command_centre=COMMAND_CENTRE), at(301))
    assert [e.tier for e in both if isinstance(e, IncidentEscalated)] == [1]
    tier_one = next(e for e in both if isinstance(e, IncidentEscalated))
    assert isinstance(tier_one, IncidentEscalated) and STATION in {p.phone for p in tier_one.alerted}
    assert [type(e).__name__ for e in both] == ["NeighboursAlerted", "IncidentEscalated"], "neighbours: a drill too"
    after = evolve(evolve(state, both[0]), tier_one)
    assert after is not None
    assert deadline_after(state, "ack") is None, "a drill sets no county deadline"
    assert deadline_after(after, "ack") is None
    assert (
        decide(after, FireTimer(incident_id=state.id, timer="escalate", command_centre=COMMAND_CENTRE), at(400)) == []
    )
    real = real_state()
    tiers = decide(real, FireTimer(incident_id=real.id, timer="escalate", command_centre=COMMAND_CENTRE), at(301))
    assert [e.tier for e in tiers if isinstance(e, IncidentEscalated)] == [1, 2], "a real alarm goes to the county"


RESPONDERS = (OFFICER, LEADER, ASSISTANT, STATION)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("timer"), st.sampled_from(("ack", "escalate", "arrival")), st.integers(0, 4000)),
        st.tuples(st.just("accept"), st.sampled_from(RESPONDERS), st.integers(0, 4000)),
        st.tuples(st.just("arrived"), st.sampled_from(RESPONDERS), st.integers(0, 4000)),
    ),
    max_size=14,
)


def _run(state: IncidentState, plan: list[tuple[str, str, int]]) -> list[Event]:
    seen: list[Event] = []
    for kind, what, seconds in sorted(plan, key=lambda p: p[2]):
        if kind == "timer":
            command: FireTimer | Respond = FireTimer(incident_id=state.id, timer=what, command_centre=COMMAND_CENTRE)  # type: ignore[arg-type]
        else:
            command = Respond(incident_id=state.id, responder=what, action=kind)  # type: ignore[arg-type]
        for event in decide(state, command, at(seconds)):
            seen.append(event)
            folded = evolve(state, event)
            assert folded is not None
            state = folded
    return seen


@settings(max_examples=150, deadline=None)
@given(steps)
def test_a_drill_never_escalates_past_the_station(plan: list[tuple[str, str, int]]) -> None:
    events = _run(drill_state(), plan)
    tiers = [e.tier for e in events if isinstance(e, IncidentEscalated)]
    assert all(t <= 1 for t in tiers), tiers
    assert len(tiers) == len(set(tiers)), "each tier once"
    alerted = {p.phone for e in events if isinstance(e, IncidentEscalated) for p in e.alerted}
    assert COMMAND_CENTRE.phone not in alerted


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(("raised", "notifying", "acknowledged", "on_scene", "resolved", "cancelled")),
    st.one_of(st.none(), st.sampled_from(CATEGORIES)),
    st.one_of(st.none(), st.sampled_from(("caller_safe", "misdial", "duplicate", "drill", "other"))),
)
def test_a_drill_is_never_counted_among_the_incidents(status: str, category: str | None, reason: str | None) -> None:
    assert kind_of(status, category, reason, "drill") in NOT_COUNTED
    counted = kind_of(status, category, reason, "call")
    assert (counted in NOT_COUNTED) == (status == "cancelled" and reason == "drill")


# --- a drill set for later ---------------------------------------------------------------------


def schedule(due: float = 3600, drill_id: str = "d1", group: str = "1") -> ScheduleDrill:
    return ScheduleDrill(drill_id=drill_id, village="dongshan", group=group, due_at=at(due), opened_by="tok1")


def test_scheduling_a_drill_is_idempotent_and_refuses_a_past_or_changed_time() -> None:
    events = drills.decide(None, schedule(), at(0))
    state = drills.fold(events)
    assert state is not None and state.scheduled.due_at == at(3600)
    assert drills.decide(state, schedule(), at(5)) == [], "a retried request decides nothing"
    with pytest.raises(InvalidTransition):
        drills.decide(state, schedule(due=7200), at(5))
    with pytest.raises(InvalidTransition):
        drills.decide(state, schedule(group="2"), at(5))
    with pytest.raises(InvalidCommand):
        drills.decide(None, schedule(due=0), at(0))
    with pytest.raises(NotFound):
        drills.decide(None, StartDrill(drill_id="d1", incident_id="i"), at(0))


def test_a_started_drill_cannot_be_called_off() -> None:
    state = drills.fold(drills.decide(None, schedule(), at(0)))
    started = drills.decide(state, StartDrill(drill_id="d1", incident_id="i1"), at(3600))
    assert started == [DrillStarted(at=at(3600), drill_id="d1", incident_id="i1")]
    after = drills.evolve(state, started[0])
    with pytest.raises(InvalidTransition):
        drills.decide(after, CancelDrill(drill_id="d1"), at(3700))


drill_steps = st.lists(
    st.tuples(st.sampled_from(("start", "cancel")), st.integers(0, 7200), st.sampled_from(("i1", "i2"))),
    max_size=10,
)


@settings(max_examples=200, deadline=None)
@given(drill_steps)
def test_a_scheduled_drill_starts_at_most_once_at_its_time_and_never_once_called_off(
    plan: list[tuple[str, int, str]],
) -> None:
    events: list[Event] = list(drills.decide(None, schedule(), at(0)))
    state = drills.fold(events)
    for kind, seconds, incident in sorted(plan, key=lambda p: p[1]):
        command: StartDrill | CancelDrill = (
            StartDrill(drill_id="d1", incident_id=incident) if kind == "start" else CancelDrill(drill_id="d1")
        )
        try:
            decided = drills.decide(state, command, at(seconds))
        except InvalidTransition:
            assert kind == "cancel" and state is not None and state.started
            continue
        for event in decided:
            events.append(event)
            state = drills.evolve(state, event)
    starts = [e for e in events if isinstance(e, DrillStarted)]
    assert len(starts) <= 1
    assert all(e.at >= at(3600) for e in starts), "never before its time"
    cancelled = [e for e in events if isinstance(e, DrillCancelled)]
    assert not (starts and cancelled), "a drill is never both started and called off"
    assert len(cancelled) <= 1
