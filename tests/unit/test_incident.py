from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace as with_

from dispatch.domain.errors import InvalidCommand, InvalidTransition, NotPermitted
from dispatch.domain.incident import (
    DEFAULT_QUORUM,
    IncidentState,
    IncomingCall,
    Respond,
    alert_for,
    decide_response,
    evolve,
    fold,
    incident_id_for,
    open_incident,
    parse_quorum,
    repeat_call,
    route_call,
)
from dispatch.domain.messages import alert_text_for
from dispatch.domain.phone import try_normalize
from dispatch.events.model import (
    AlarmRaised,
    DeliveryFailed,
    DeliverySucceeded,
    Event,
    IncidentCovered,
    IncidentEscalated,
    LineClosed,
    Person,
    Reached,
    ResponderAccepted,
    ResponderArrived,
    ResponderDeclined,
    RespondersNotified,
    Unreached,
    UnregisteredCall,
)

from .fixtures import at, directory_with

POLICY = parse_quorum(DEFAULT_QUORUM)
DUTY = (Person(phone="+8610110", name="县局值班", role="duty"),)
HOUSEHOLD = "+8613800000001"
OTHER_HOUSEHOLD = "+8613800000002"
LEADER = "+8613800000008"
ASSISTANT = "+8613900000001"
OFFICER = "+8613900000009"
STATION = "+8673184512345"


def call(caller: str, call_id: str = "c1", seconds: float = 0) -> IncomingCall:
    return IncomingCall(
        call_id=call_id,
        caller_raw=caller,
        caller=try_normalize(caller),
        callee="6995",
        channel="voice",
        called_at=at(seconds),
        at=at(seconds),
    )


def raised(caller: str = HOUSEHOLD) -> IncidentState:
    route = route_call(directory_with(), call(caller), POLICY, DUTY)
    state = evolve(None, open_incident(route, call(caller), 0))
    assert state is not None
    return state


def apply(state: IncidentState, events: list[Event]) -> IncidentState:
    for event in events:
        new = evolve(state, event)
        assert new is not None
        state = new
    return state


def respond(state: IncidentState, who: str, action: str, seconds: float = 1, **kw: str) -> list[Event]:
    return decide_response(state, Respond(incident_id=state.id, responder=who, action=action, at=at(seconds), **kw))  # type: ignore[arg-type]


def test_a_household_call_alerts_every_other_member_and_nobody_else() -> None:
    route = route_call(directory_with(), call(HOUSEHOLD), POLICY, DUTY)
    assert route.kind == "group" and route.line == "group.dongshan.1"
    phones = [p.phone for p in route.recipients]
    assert len(phones) == 9 and HOUSEHOLD not in phones
    assert {OFFICER, ASSISTANT, LEADER} <= set(phones)
    assert "+8613800000011" not in phones
    assert [d.phone for d in route.duty_desks] == [STATION]
    assert route.quorum == (("officer",), ("leader", "assistant"))


def test_an_unknown_number_goes_to_the_duty_desk() -> None:
    route = route_call(directory_with(), call("13111112222"), POLICY, DUTY)
    assert route.kind == "unregistered"
    assert route.line == "caller.8613111112222"
    assert route.recipients == DUTY
    opened = open_incident(route, call("13111112222"), 0)
    assert isinstance(opened, UnregisteredCall)
    alert = alert_for(opened, opened)
    assert alert is not None and not alert.registered and "未登记号码" in alert_text_for(alert)


def test_a_withheld_number_is_still_raised() -> None:
    route = route_call(directory_with(), call("anonymous", call_id="x"), POLICY, DUTY)
    assert route.kind == "unregistered" and route.line.startswith("caller.anon-")
    assert route.caller.phone == "anonymous"


def test_an_officer_serving_several_groups_raises_a_village_incident_with_the_duty_desk() -> None:
    route = route_call(directory_with(), call(OFFICER), POLICY, DUTY)
    assert route.kind == "village" and route.line == "village.dongshan"
    phones = {p.phone for p in route.recipients}
    assert phones == {STATION, LEADER, ASSISTANT, "+8613800000018"}
    assert route.quorum == (("duty",),)


def test_covered_needs_the_officer_and_the_leader_or_assistant() -> None:
    state = raised()
    events = respond(state, LEADER, "accept")
    assert [type(e) for e in events] == [ResponderAccepted]
    state = apply(state, events)
    assert state.status == "acknowledged" and not state.covered
    events = respond(state, OFFICER, "accept", seconds=2)
    assert [type(e) for e in events] == [ResponderAccepted, IncidentCovered]
    assert events[1].accepted_by == (LEADER, OFFICER)  # type: ignore[attr-defined]
    state = apply(state, events)
    assert state.covered and state.covered_at == at(2)
    assert respond(state, ASSISTANT, "accept", seconds=3)[0].phone == ASSISTANT  # type: ignore[attr-defined]


def test_quorum_clauses_nobody_can_meet_are_dropped() -> None:
    state = raised(caller=LEADER)
    assert state.opened.quorum == (("officer",), ("leader", "assistant"))
    text = directory_with().groups["dongshan.2"]
    assert text.leader() is not None
    route = route_call(directory_with(), call("13800000018"), POLICY, DUTY)
    assert route.quorum == (("officer",),)


def test_answers_from_outsiders_are_refused() -> None:
    with pytest.raises(NotPermitted):
        respond(raised(), "+8613800000011", "accept")


def test_the_duty_desk_may_answer_without_being_alerted() -> None:
    state = raised()
    assert [type(e) for e in respond(state, STATION, "accept")] == [ResponderAccepted]
    alert = alert_for(state.opened, state.opened)
    assert alert is not None and STATION not in [p.phone for p in alert.recipients]


def test_the_caller_may_only_cancel() -> None:
    state = raised()
    with pytest.raises(InvalidTransition):
        respond(state, HOUSEHOLD, "accept")
    events = respond(state, HOUSEHOLD, "cancel")
    assert events[0].reason == "caller_safe"  # type: ignore[attr-defined]
    assert isinstance(events[1], LineClosed) and events[1].line == "group.dongshan.1" and events[1].epoch == 0


def test_resolve_needs_a_category_and_a_staff_role() -> None:
    state = raised()
    with pytest.raises(InvalidCommand):
        respond(state, OFFICER, "resolve")
    with pytest.raises(NotPermitted):
        respond(state, OTHER_HOUSEHOLD, "resolve", category="dispute")
    events = respond(state, OFFICER, "resolve", category="dispute", note="邻里纠纷已调解")
    state = apply(state, events)
    assert state.status == "resolved" and state.category == "dispute"
    with pytest.raises(InvalidTransition, match="already resolved"):
        respond(state, LEADER, "accept")


def test_arrival_without_accept_records_both() -> None:
    state = raised()
    names = [type(e).__name__ for e in respond(state, OFFICER, "arrived")]
    assert names == ["ResponderAccepted", "ResponderArrived"]


def test_repeated_answers_decide_nothing() -> None:
    state = apply(raised(), respond(raised(), LEADER, "accept"))
    assert respond(state, LEADER, "accept") == []
    with pytest.raises(InvalidTransition):
        respond(state, LEADER, "decline")


def test_repeat_call_realerts_only_who_has_not_answered_and_not_within_30s() -> None:
    state = raised()
    state = apply(state, respond(state, OFFICER, "accept", seconds=5))
    other = Person(phone=OTHER_HOUSEHOLD, role="household")
    soon = repeat_call(state, call(OTHER_HOUSEHOLD, "c2", seconds=10), other)
    assert soon.urgency == 2 and soon.realerted == ()
    assert alert_for(state.opened, soon) is None
    later = repeat_call(state, call(OTHER_HOUSEHOLD, "c3", seconds=40), other)
    targets = {p.phone for p in later.realerted}
    assert OFFICER not in targets and OTHER_HOUSEHOLD not in targets and LEADER in targets
    assert len(targets) == 7
    alert = alert_for(state.opened, later)
    assert alert is not None and alert.reason == "repeat" and alert.urgency == 2 and alert.caller == other
    assert {p.phone for p in alert.recipients} == targets
    after = apply(state, [later])
    assert "c3" in after.calls and "c1" in after.calls
    again = repeat_call(after, call(OTHER_HOUSEHOLD, "c4", seconds=45), other)
    assert again.realerted == (), "the 30 s limit must hold from the decision, not from delivery"


def test_the_opening_alert_goes_to_every_recipient() -> None:
    state = raised()
    alert = alert_for(state.opened, state.opened)
    assert alert is not None and alert.reason == "raised" and alert.registered
    assert alert.recipients == state.opened.recipients
    assert "张桂兰" in alert_text_for(alert) and "接警请按1" in alert_text_for(alert)


def test_incident_ids_are_a_function_of_line_and_epoch() -> None:
    assert raised().id == incident_id_for("group.dongshan.1", 0)
    assert incident_id_for("group.dongshan.1", 0) != incident_id_for("group.dongshan.1", 1)
    assert incident_id_for("group.dongshan.1", 0) != incident_id_for("group.dongshan.2", 0)


ACTIONS = st.sampled_from(["accept", "decline", "arrived", "resolve", "cancel"])
PEOPLE = st.sampled_from([HOUSEHOLD, OTHER_HOUSEHOLD, LEADER, ASSISTANT, OFFICER, STATION, "+8613800000011"])
CATEGORY = st.sampled_from([None, "dispute", "fire", "bogus"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(PEOPLE, ACTIONS, CATEGORY), max_size=25))
def test_any_sequence_of_answers_keeps_the_invariants(answers: list[tuple[str, str, str | None]]) -> None:
    state = raised()
    log: list[Event] = [state.opened]
    for i, (who, action, category) in enumerate(answers):
        was_closed = state.closed
        try:
            events = decide_response(
                state,
                Respond(incident_id=state.id, responder=who, action=action, at=at(i + 1), category=category),  # type: ignore[arg-type]
            )
        except (NotPermitted, InvalidTransition, InvalidCommand):
            continue
        assert not was_closed, "a closed incident accepted an answer"
        log.extend(events)
        state = apply(state, events)
    covered = [e for e in log if isinstance(e, IncidentCovered)]
    assert len(covered) <= 1
    roles = {e.role for e in log if isinstance(e, ResponderAccepted)}
    if "officer" in roles and roles & {"leader", "assistant"}:
        assert len(covered) == 1
    if covered:
        accepted_before = {e.phone for e in log[: log.index(covered[0])] if isinstance(e, ResponderAccepted)}
        assert set(covered[0].accepted_by) == accepted_before
    assert sum(isinstance(e, LineClosed) for e in log) == (1 if state.closed else 0)
    refolded = fold(log)
    assert refolded is not None and refolded.status == state.status and refolded.covered_at == state.covered_at


def test_alarm_raised_opens_and_fold_is_deterministic() -> None:
    state = raised()
    assert isinstance(state.opened, AlarmRaised)
    assert state.status == "raised" and state.urgency == 1
    assert len([r for r in state.responders.values() if r.recipient]) == 9


OUTCOMES = st.sampled_from(["delivered", "permanent", "retried_delivered", "retried_exhausted"])


@given(st.data())
@settings(max_examples=150, deadline=None)
def test_a_first_attempt_outcome_with_handed_at_folds_like_a_notice_beside_it(data: st.DataObject) -> None:
    """Old logs hold one notice per job beside its outcomes; new ones fold the notice into the first
    attempt's outcomes (handed_at) and give only the retried targets a notice. Whatever the targets'
    fates and whatever order the concurrently appended observations landed in, the state is the same."""
    state = raised()
    opened = state.opened
    phones = [p.phone for p in opened.recipients]
    fates = {phone: data.draw(OUTCOMES, label=phone) for phone in phones}
    iid, ch, rnd = opened.incident_id, "sms", 7
    handed, first, second = at(1), at(2), at(5)

    def outcomes(handed_at: object) -> list[Event]:
        ok = tuple(Reached(phone=p, address=p) for p in phones if fates[p] == "delivered")
        bad = tuple(
            Unreached(phone=p, address=p, kind="permanent", reason="HTTP 404")
            for p in phones
            if fates[p] == "permanent"
        )
        later_ok = tuple(Reached(phone=p, address=p) for p in phones if fates[p] == "retried_delivered")
        later_bad = tuple(
            Unreached(phone=p, address=p, kind="exhausted", reason="HTTP 503")
            for p in phones
            if fates[p] == "retried_exhausted"
        )
        out: list[Event] = []
        if ok:
            out.append(
                DeliverySucceeded(at=first, incident_id=iid, channel=ch, round=rnd, targets=ok, handed_at=handed_at)  # type: ignore[arg-type]
            )
        if bad:
            out.append(
                DeliveryFailed(at=first, incident_id=iid, channel=ch, round=rnd, failures=bad, handed_at=handed_at)  # type: ignore[arg-type]
            )
        if later_ok:
            out.append(
                DeliverySucceeded(at=second, incident_id=iid, channel=ch, round=rnd, attempt=2, targets=later_ok)
            )
        if later_bad:
            out.append(DeliveryFailed(at=second, incident_id=iid, channel=ch, round=rnd, attempt=2, failures=later_bad))
        return out

    retried = tuple(p for p in phones if fates[p].startswith("retried"))
    old = [RespondersNotified(at=handed, incident_id=iid, channel=ch, round=rnd, phones=tuple(phones)), *outcomes(None)]
    new: list[Event] = [*outcomes(handed)]
    if retried:
        new.append(RespondersNotified(at=handed, incident_id=iid, channel=ch, round=rnd, phones=retried))
    old_state = fold([opened, *data.draw(st.permutations(old), label="old order")])
    new_state = fold([opened, *data.draw(st.permutations(new), label="new order")])
    assert old_state is not None and new_state is not None
    assert new_state == old_state
    assert all(new_state.responders[p].notified == {ch: handed} for p in phones)
    assert new_state.status == "notifying" and new_state.rounds == {rnd} and new_state.first_notified_at == handed


PEOPLE_EVENTS = st.sampled_from(["notified", "succeeded", "failed", "escalated", "accepted", "declined", "arrived"])


@given(st.data())
@settings(max_examples=150, deadline=None)
def test_an_event_reaching_several_people_folds_as_each_person_in_turn(data: st.DataObject) -> None:
    """`evolve` copies the responders once per event: the same person twice in one event (two addresses
    failing, a duplicate target) still folds as one person after another, and the state it started
    from is never changed (the incident cache shares states)."""
    state = raised()
    phones = [p.phone for p in state.opened.recipients] + ["+8613700000000"]  # one who is no responder
    iid, rnd = state.opened.incident_id, 3
    for step in range(data.draw(st.integers(1, 6), label="events")):
        kind = data.draw(PEOPLE_EVENTS, label=f"event {step}")
        some = data.draw(st.lists(st.sampled_from(phones), min_size=1, max_size=6), label=f"people {step}")
        when, channel = at(10 + step), data.draw(st.sampled_from(["sms", "webhook"]), label=f"channel {step}")
        event: Event
        if kind == "notified":
            event = RespondersNotified(at=when, incident_id=iid, channel=channel, round=rnd, phones=tuple(some))
        elif kind == "succeeded":
            targets = tuple(Reached(phone=p, address=f"{p}/{i % 2}") for i, p in enumerate(some))
            event = DeliverySucceeded(at=when, incident_id=iid, channel=channel, round=rnd, targets=targets)
        elif kind == "failed":
            failures = tuple(
                Unreached(phone=p, address=f"a{i}", kind="permanent", reason="HTTP 404") for i, p in enumerate(some)
            )
            event = DeliveryFailed(at=when, incident_id=iid, channel=channel, round=rnd, failures=failures)
        elif kind == "escalated":
            people = tuple(Person(phone=p, name="n", role="officer") for p in some)
            event = IncidentEscalated(at=when, incident_id=iid, tier=1, reason="ack_deadline", alerted=people)
        elif kind == "accepted":
            event = ResponderAccepted(at=when, incident_id=iid, phone=some[0], role="leader")
        elif kind == "declined":
            event = ResponderDeclined(at=when, incident_id=iid, phone=some[0], role="leader")
        else:
            event = ResponderArrived(at=when, incident_id=iid, phone=some[0], role="leader")
        before = copy.deepcopy(state)
        after = evolve(state, event)
        assert state == before, "evolve changed the state it was given"
        assert after == one_at_a_time(state, event)
        assert after is not None
        state = after


def one_at_a_time(state: IncidentState, event: Event) -> IncidentState | None:
    """The reference: an event of several people folded as one event per person, in its order."""
    if isinstance(event, RespondersNotified):
        parts: list[Event] = [with_(event, phones=(p,)) for p in event.phones] or [event]
    elif isinstance(event, DeliverySucceeded):
        parts = [with_(event, targets=(t,)) for t in event.targets]
    elif isinstance(event, DeliveryFailed):
        parts = [with_(event, failures=(f,)) for f in event.failures]
    elif isinstance(event, IncidentEscalated):
        parts = [with_(event, alerted=(p,)) for p in event.alerted]
    else:
        parts = [event]
    folded: IncidentState | None = state
    for part in parts:
        folded = evolve(folded, part)
    return folded
