"""The silent duress alarm (issue 22.2) in the domain: who a duress call alerts, its line, and that
no decision of a silent incident ever alerts its caller or a household."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.errors import InvalidCommand, InvalidTransition, NotPermitted
from dispatch.domain.incident import (
    DEFAULT_QUORUM,
    FireTimer,
    IncidentState,
    Respond,
    alert_for,
    decide,
    evolve,
    open_incident,
    parse_quorum,
    route_call,
)
from dispatch.domain.messages import alert_text_for, describe, markdown_for, spoken_text_for
from dispatch.events.model import (
    AlarmRaised,
    CallRepeated,
    Event,
    IncidentCancelled,
    IncidentCovered,
    IncidentEscalated,
    IncidentOpened,
    Person,
    ResponderAccepted,
)

from .fixtures import at, directory_with
from .test_incident import ASSISTANT, DUTY, HOUSEHOLD, LEADER, OFFICER, OTHER_HOUSEHOLD, STATION, call

POLICY = parse_quorum(DEFAULT_QUORUM)
COMMAND_CENTRE = Person(phone="+8610110110", name="指挥中心", role="command_centre")


def duress(caller: str = HOUSEHOLD) -> IncidentState:
    silent = msgspec.structs.replace(call(caller), silent=True)
    route = route_call(directory_with(), silent, POLICY, DUTY)
    state = evolve(None, open_incident(route, silent, 0))
    assert state is not None
    return state


def test_a_duress_call_alerts_only_the_officer_the_assistant_and_the_duty_desk() -> None:
    state = duress()
    opened = state.opened
    assert isinstance(opened, AlarmRaised) and opened.silent
    assert {p.phone for p in opened.recipients} == {OFFICER, ASSISTANT, STATION}
    assert opened.line == "silent.group.dongshan.1", "never merged into the group's audible incident"
    assert opened.quorum == (("officer",), ("leader", "assistant"))
    alert = alert_for(opened, opened)
    assert alert is not None and alert.silent
    for text in (alert_text_for(alert), spoken_text_for(alert), markdown_for(alert, "http://c")):
        assert "静默报警" in text
    assert "静默报警" in describe(opened, {})


def test_the_caller_is_never_told_help_is_coming() -> None:
    state = duress()
    for who in (OFFICER, ASSISTANT):
        events = decide(state, Respond(incident_id=state.id, responder=who, action="accept", at=at(1)), at(1))
        for event in events:
            new = evolve(state, event)
            assert new is not None
            state = new
            if isinstance(event, ResponderAccepted | IncidentCovered):
                assert alert_for(state.opened, event, state) is None, "no caller update"
    assert state.covered


COMMANDS = st.one_of(
    st.tuples(
        st.just("respond"),
        st.sampled_from([HOUSEHOLD, OTHER_HOUSEHOLD, LEADER, ASSISTANT, OFFICER, STATION]),
        st.sampled_from(["accept", "decline", "arrived", "resolve", "cancel"]),
    ),
    st.tuples(st.just("timer"), st.sampled_from(["ack", "escalate", "arrival"]), st.just("")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(COMMANDS, max_size=20))
def test_no_decision_of_a_silent_incident_alerts_the_caller_or_a_household(
    commands: list[tuple[str, str, str]],
) -> None:
    state = duress()
    log: list[Event] = [state.opened]
    for i, (kind, a, b) in enumerate(commands):
        command = (
            Respond(incident_id=state.id, responder=a, action=b, at=at(i + 1), category="criminal")  # type: ignore[arg-type]
            if kind == "respond"
            else FireTimer(incident_id=state.id, timer=a, command_centre=COMMAND_CENTRE)  # type: ignore[arg-type]
        )
        try:
            events = decide(state, command, at(i + 1))
        except (NotPermitted, InvalidTransition, InvalidCommand):
            continue
        for event in events:
            new = evolve(state, event)
            assert new is not None
            state = new
        log.extend(events)
    for event in log:
        if not isinstance(
            event,
            IncidentOpened | CallRepeated | IncidentEscalated | ResponderAccepted | IncidentCovered | IncidentCancelled,
        ):
            continue
        alert = alert_for(state.opened, event, state)
        if alert is None:
            continue
        assert alert.silent
        assert all(p.phone != HOUSEHOLD and p.role != "household" for p in alert.recipients), alert.reason


# --- incidents an officer opens (issue 22.4) ------------------------------------------------------


def report(caller: str = "", name: str = "", report_id: str = "r1", group: str = "1") -> IncidentState:
    from dispatch.domain.incident import IncomingCall

    incoming = IncomingCall(
        call_id=f"report:{report_id}",
        caller_raw=caller,
        caller=caller or None,
        callee="",
        channel="api",
        called_at=at(0),
        at=at(0),
        for_group=("dongshan", group),
        caller_name=name,
        origin="walk_in",
        opened_by="tok1",
        opened_by_name="吴警官",
    )
    route = route_call(directory_with(), incoming, POLICY, DUTY)
    state = evolve(None, open_incident(route, incoming, 0))
    assert state is not None
    return state


def test_an_officer_s_report_rings_the_group_and_records_origin_and_officer() -> None:
    state = report(caller="+8613700000099", name="张三")
    opened = state.opened
    assert isinstance(opened, AlarmRaised)
    assert (opened.origin, opened.opened_by, opened.opened_by_name) == ("walk_in", "tok1", "吴警官")
    assert len(opened.recipients) == 10 and opened.caller.name == "张三" and opened.caller.role == "unregistered"
    assert opened.line.startswith("report.") and report(report_id="r2").opened.line != opened.line
    alert = alert_for(opened, opened)
    assert alert is not None and "群众来所报警（吴警官登记）" in alert_text_for(alert)
    assert "吴警官 登记群众来所报警" in describe(opened, {})


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(["", HOUSEHOLD, OTHER_HOUSEHOLD, LEADER, OFFICER, "+8613700000099"]), st.sampled_from(["1", "2"])
)
def test_a_report_alerts_exactly_the_group_but_its_caller(caller: str, group: str) -> None:
    members = {p.phone for p in directory_with().group("dongshan", group).members.values()}  # type: ignore[union-attr]
    state = report(caller=caller, group=group)
    assert {p.phone for p in state.opened.recipients} == members - {caller}


def test_a_report_for_a_group_that_does_not_exist_is_not_found() -> None:
    import pytest

    from dispatch.domain.errors import NotFound

    with pytest.raises(NotFound):
        report(group="99")
