"""Absences with substitutes in the pure domain: the member decider's rules and time boundaries, and
what an alarm rings and counts toward cover while a member is away (hypothesis properties)."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.absence import (
    MAX_ABSENCE,
    Absence,
    EndAbsence,
    MemberState,
    SetAbsence,
    decide_member,
    evolve_member,
    stand_ins,
)
from dispatch.domain.directory import Directory, encode_snapshot
from dispatch.domain.errors import InvalidCommand, InvalidTransition, NotFound
from dispatch.domain.incident import (
    DEFAULT_QUORUM,
    FireTimer,
    IncidentState,
    IncomingCall,
    Respond,
    decide,
    evolve,
    open_incident,
    parse_quorum,
    route_call,
)
from dispatch.events.model import (
    AbsenceEnded,
    AbsenceSet,
    Actor,
    Event,
    IncidentCovered,
    IncidentEscalated,
    NeighboursAlerted,
    Person,
    ResponderAccepted,
)

from .fixtures import at, directory_with

POLICY = parse_quorum(DEFAULT_QUORUM)
DUTY = (Person(phone="+8673184512345", name="城关派出所值班室", role="duty"),)
HOUSEHOLDS = tuple(f"+861380000000{i}" for i in range(1, 8))
LEADER = "+8613800000008"
ASSISTANT = "+8613900000001"
OFFICER = "+8613900000009"
NEIGHBOUR_OFFICER = "+8613700000099"  # another village's officer, in no group here
ACTOR = Actor(channel="api", token_id="t-admin", name="管理员")
HOUR = 3600.0


def member(phone: str = OFFICER, bound: bool = True, absence: Absence | None = None) -> MemberState:
    return MemberState(phone=phone, bound=bound, absence=absence)


def set_cmd(start: float, until: float, substitute: str | None = NEIGHBOUR_OFFICER, phone: str = OFFICER) -> SetAbsence:
    return SetAbsence(phone=phone, starts=at(start), until=at(until), substitute=substitute, actor=ACTOR)


def folded(events: list[Event], state: Absence | None = None) -> Absence | None:
    for event in events:
        state = evolve_member(state, event)
    return state


def with_absences(*absences: SetAbsence) -> Directory:
    directory = directory_with()
    seq = 10_000
    for command in absences:
        seq += 1
        (event,) = decide_member(member(command.phone), command, at(0))
        directory.apply(event, seq)
    return directory


def call(caller: str, seconds: float, call_id: str = "c1") -> IncomingCall:
    return IncomingCall(
        call_id=call_id,
        caller_raw=caller,
        caller=caller,
        callee="6995",
        channel="voice",
        called_at=at(seconds),
        at=at(seconds),
    )


def raised(directory: Directory, caller: str, seconds: float) -> IncidentState:
    c = call(caller, seconds)
    state = evolve(None, open_incident(route_call(directory, c, POLICY, DUTY), c, 0))
    assert state is not None
    return state


# --- the member decider ---------------------------------------------------------------------------


def test_an_absence_is_recorded_with_its_actor_and_replaced_by_the_next() -> None:
    events = decide_member(member(), set_cmd(0, 8 * HOUR), at(0))
    assert events == [
        AbsenceSet(at=at(0), phone=OFFICER, starts=at(0), until=at(8 * HOUR), substitute=NEIGHBOUR_OFFICER, actor=ACTOR)
    ]
    state = folded(events)
    assert state is not None and state.actor == ACTOR and state.substitute == NEIGHBOUR_OFFICER
    again = decide_member(member(absence=state), set_cmd(0, 8 * HOUR), at(60))
    assert again == [], "the same absence set again decides nothing"
    longer = decide_member(member(absence=state), set_cmd(0, 10 * HOUR), at(60))
    replaced = folded(longer, state)
    assert replaced is not None and replaced.until == at(10 * HOUR)


@pytest.mark.parametrize(
    ("start", "until", "substitute", "why"),
    [
        (0, 0, NEIGHBOUR_OFFICER, "until must be after from"),
        (HOUR, 0, NEIGHBOUR_OFFICER, "until must be after from"),
        (-2 * HOUR, -HOUR, NEIGHBOUR_OFFICER, "already over"),
        (-2 * HOUR, 0, NEIGHBOUR_OFFICER, "already over"),  # until == now: over (end excluded)
        (0, MAX_ABSENCE.total_seconds() + 1, NEIGHBOUR_OFFICER, "at most"),
        (0, HOUR, OFFICER, "themselves"),
        (MAX_ABSENCE.total_seconds() + 1, MAX_ABSENCE.total_seconds() + HOUR, NEIGHBOUR_OFFICER, "ahead"),
        (0, HOUR, "13700000099", "phone number"),
    ],
)
def test_an_absence_that_makes_no_sense_is_refused(start: float, until: float, substitute: str, why: str) -> None:
    with pytest.raises(InvalidCommand, match=why):
        decide_member(member(), set_cmd(start, until, substitute), at(0))


def test_the_longest_absence_and_one_ending_a_microsecond_after_now_are_accepted() -> None:
    assert decide_member(member(), set_cmd(0, MAX_ABSENCE.total_seconds()), at(0))
    assert decide_member(member(), set_cmd(-HOUR, 0.000001), at(0))


def test_only_a_member_of_a_group_can_be_marked_absent() -> None:
    with pytest.raises(NotFound):
        decide_member(member(NEIGHBOUR_OFFICER, bound=False), set_cmd(0, HOUR, phone=NEIGHBOUR_OFFICER), at(0))


def test_ending_an_absence_early_is_recorded_once_and_ending_none_decides_nothing() -> None:
    state = folded(decide_member(member(), set_cmd(0, 8 * HOUR), at(0)))
    ended = decide_member(member(absence=state), EndAbsence(phone=OFFICER, actor=ACTOR), at(HOUR))
    assert ended == [AbsenceEnded(at=at(HOUR), phone=OFFICER, actor=ACTOR)]
    assert folded(ended, state) is None
    assert decide_member(member(), EndAbsence(phone=OFFICER), at(HOUR)) == []
    over = decide_member(member(absence=state), EndAbsence(phone=OFFICER), at(8 * HOUR))
    assert over == [], "an absence already over needs no ending"


def test_absent_from_its_start_included_to_its_end_excluded() -> None:
    state = folded(decide_member(member(), set_cmd(HOUR, 2 * HOUR), at(0)))
    assert state is not None
    tick = timedelta(microseconds=1)
    assert not state.absent_at(at(HOUR) - tick)
    assert state.absent_at(at(HOUR))
    assert state.absent_at(at(2 * HOUR) - tick)
    assert not state.absent_at(at(2 * HOUR))


# --- routing: who an alarm rings ------------------------------------------------------------------


def test_an_officer_on_leave_is_not_rung_and_the_substitute_is_in_the_officer_role() -> None:
    directory = with_absences(set_cmd(0, 8 * HOUR))
    state = raised(directory, HOUSEHOLDS[0], HOUR)
    rung = {p.phone: p for p in state.opened.recipients}
    assert OFFICER not in rung
    assert rung[NEIGHBOUR_OFFICER].role == "officer"
    assert rung[NEIGHBOUR_OFFICER].stands_in_for == OFFICER
    assert [p.phone for p in state.opened.absent] == [OFFICER]
    assert ("officer",) in state.opened.quorum, "the officer clause stays: the substitute meets it"


@pytest.mark.parametrize(("seconds", "officer_rung"), [(HOUR - 0.001, True), (HOUR, False), (2 * HOUR, True)])
def test_the_ring_list_changes_exactly_at_the_absence_bounds(seconds: float, officer_rung: bool) -> None:
    directory = with_absences(set_cmd(HOUR, 2 * HOUR))
    rung = {p.phone for p in raised(directory, HOUSEHOLDS[0], seconds).opened.recipients}
    assert (OFFICER in rung) is officer_rung
    assert (NEIGHBOUR_OFFICER in rung) is not officer_rung


def test_an_officer_away_without_a_substitute_keeps_the_officer_clause_and_escalates() -> None:
    directory = with_absences(set_cmd(0, 8 * HOUR, substitute=None))
    state = raised(directory, HOUSEHOLDS[0], HOUR)
    assert all(p.role != "officer" for p in state.opened.recipients)
    assert ("officer",) in state.opened.quorum
    assert not state.opened.relaxed
    leader = decide(state, Respond(incident_id=state.id, responder=LEADER, action="accept"), at(HOUR + 5))
    state = fold_into(state, leader)
    assert not state.covered
    (neighbours, escalated) = decide(state, FireTimer(incident_id=state.id, timer="ack"), at(HOUR + 60))
    assert isinstance(escalated, IncidentEscalated) and escalated.tier == 1
    assert isinstance(neighbours, NeighboursAlerted), "group 2's leader alongside the station"
    alerted = {p.phone for p in escalated.alerted}
    assert OFFICER not in alerted and DUTY[0].phone in alerted


def test_the_substitute_is_rung_again_on_escalation_and_the_absent_officer_is_not() -> None:
    directory = with_absences(set_cmd(0, 8 * HOUR))
    state = raised(directory, HOUSEHOLDS[0], HOUR)
    (neighbours, tier1) = decide(state, FireTimer(incident_id=state.id, timer="ack"), at(HOUR + 60))
    assert isinstance(tier1, IncidentEscalated) and isinstance(neighbours, NeighboursAlerted)
    alerted = {p.phone for p in tier1.alerted}
    assert NEIGHBOUR_OFFICER in alerted and OFFICER not in alerted


def test_a_substitute_from_the_group_is_rung_once_in_the_better_role() -> None:
    directory = with_absences(set_cmd(0, 8 * HOUR, substitute=ASSISTANT))
    rung = [p for p in raised(directory, HOUSEHOLDS[0], HOUR).opened.recipients if p.phone == ASSISTANT]
    assert len(rung) == 1 and rung[0].role == "officer"


def test_a_substitute_away_too_is_not_rung() -> None:
    directory = with_absences(
        set_cmd(0, 8 * HOUR, substitute=ASSISTANT), set_cmd(0, 8 * HOUR, substitute=None, phone=ASSISTANT)
    )
    rung = {p.phone for p in raised(directory, HOUSEHOLDS[0], HOUR).opened.recipients}
    assert OFFICER not in rung and ASSISTANT not in rung


def fold_into(state: IncidentState, events: list[Event]) -> IncidentState:
    for event in events:
        new = evolve(state, event)
        assert new is not None
        state = new
    return state


GROUP = (*HOUSEHOLDS, LEADER, ASSISTANT, OFFICER)
OUTSIDE = (NEIGHBOUR_OFFICER, "+8613700000098")
absence_strategy = st.tuples(
    st.sampled_from(GROUP),
    st.floats(min_value=-10 * HOUR, max_value=10 * HOUR, allow_nan=False),
    st.floats(min_value=1, max_value=10 * HOUR, allow_nan=False),
    st.one_of(st.none(), st.sampled_from(GROUP + OUTSIDE)),
)


@settings(max_examples=200, deadline=None)
@given(
    absences=st.lists(absence_strategy, max_size=6),
    caller=st.sampled_from(HOUSEHOLDS),
    seconds=st.floats(min_value=-10 * HOUR, max_value=20 * HOUR, allow_nan=False),
)
def test_an_absent_member_is_never_in_the_ring_list_during_their_absence(
    absences: list[tuple[str, float, float, str | None]], caller: str, seconds: float
) -> None:
    directory = directory_with()
    for i, (phone, start, length, substitute) in enumerate(absences):
        if substitute == phone:
            continue
        command = set_cmd(start, start + length, substitute, phone)
        for event in decide_member(member(phone), command, at(-10 * HOUR)):
            directory.apply(event, 10_000 + i)
    now = at(seconds)
    state = raised(directory, caller, seconds)
    rung = {p.phone: p for p in state.opened.recipients}
    for phone, absence in directory.absences.items():
        if absence.absent_at(now):
            assert phone not in rung, f"{phone} is away at {now} and was rung"
    for person in state.opened.recipients:
        if person.stands_in_for:
            away = directory.absences[person.stands_in_for]
            assert away.absent_at(now) and away.substitute == person.phone
    assert len(rung) == len(state.opened.recipients), "a number is rung once"


@settings(max_examples=200, deadline=None)
@given(
    substitute=st.sampled_from((NEIGHBOUR_OFFICER, ASSISTANT, LEADER, HOUSEHOLDS[3], None)),
    answers=st.lists(
        st.tuples(
            st.sampled_from((*HOUSEHOLDS[1:], LEADER, ASSISTANT, OFFICER, NEIGHBOUR_OFFICER, DUTY[0].phone)),
            st.sampled_from(("accept", "decline")),
        ),
        max_size=12,
    ),
)
def test_the_officer_clause_is_met_only_by_the_substitute_or_the_absent_officer(
    substitute: str | None, answers: list[tuple[str, str]]
) -> None:
    directory = with_absences(set_cmd(0, 8 * HOUR, substitute=substitute))
    state = raised(directory, HOUSEHOLDS[0], HOUR)
    accepted: list[str] = []
    covered: IncidentCovered | None = None
    for i, (who, action) in enumerate(answers):
        if who not in state.responders:
            continue
        respond = Respond(
            incident_id=state.id,
            responder=who,
            action=action,  # type: ignore[arg-type]
            actor=Actor(channel="keypad", phone=who),
        )
        try:
            events = decide(state, respond, at(HOUR + i + 1))
        except InvalidTransition:  # an accepted alarm cannot be declined: not what is tested here
            continue
        accepted += [e.phone for e in events if isinstance(e, ResponderAccepted)]
        covered = covered or next((e for e in events if isinstance(e, IncidentCovered)), None)
        state = fold_into(state, events)
    if covered is not None:
        stand_in = {OFFICER} | ({substitute} if substitute else set())
        assert stand_in & set(accepted), "covered without the officer's role: neither the substitute nor the officer"
        assert covered.kind == "full"


def test_stand_ins_with_no_absence_rings_everyone_unchanged() -> None:
    people = [Person(phone=p, role="household") for p in HOUSEHOLDS]
    assert stand_ins(people, {}, at(0)) == (people, [])


def test_a_snapshot_keeps_absences_and_their_sequences() -> None:
    directory = with_absences(set_cmd(0, 8 * HOUR), set_cmd(HOUR, 2 * HOUR, substitute=None, phone=LEADER))
    restored, _ = Directory.restore(encode_snapshot(directory.snapshot("created", {"x": 1})))
    assert restored.absences == directory.absences
    assert restored.member_seqs == directory.member_seqs
    assert restored.absent(OFFICER, at(HOUR)) is not None
    assert restored.absent(LEADER, at(0)) is None


def test_a_substitute_the_roster_knows_is_rung_by_their_name_and_language() -> None:
    people = [Person(phone=OFFICER, name="吴警官", role="officer")]
    absences = {OFFICER: Absence(OFFICER, at(0), at(HOUR), NEIGHBOUR_OFFICER)}

    def known(phone: str) -> Person | None:
        return (
            Person(phone=phone, name="钱警官", role="officer", language="yue") if phone == NEIGHBOUR_OFFICER else None
        )

    rung, absent = stand_ins(people, absences, at(1), known)
    assert rung == [
        Person(phone=NEIGHBOUR_OFFICER, name="钱警官", role="officer", stands_in_for=OFFICER, language="yue")
    ]
    assert absent == people
    named = {OFFICER: Absence(OFFICER, at(0), at(HOUR), NEIGHBOUR_OFFICER, substitute_name="钱队")}
    assert stand_ins(people, named, at(1), known)[0][0].name == "钱队", "the name the absence gave wins"


def test_a_duress_alarm_rings_the_substitute_officer_silently() -> None:
    directory = with_absences(set_cmd(0, 8 * HOUR))
    silent = msgspec.structs.replace(call(HOUSEHOLDS[0], HOUR), silent=True)
    route = route_call(directory, silent, POLICY, DUTY)
    rung = {p.phone: p.role for p in route.recipients}
    assert rung.get(NEIGHBOUR_OFFICER) == "officer" and OFFICER not in rung
    assert all(role in ("officer", "assistant", "duty") for role in rung.values())


def test_a_caller_in_several_groups_reaches_the_substitute_of_an_absent_assistant() -> None:
    directory = with_absences(set_cmd(0, 8 * HOUR, substitute=NEIGHBOUR_OFFICER, phone=ASSISTANT))
    route = route_call(directory, call(OFFICER, HOUR), POLICY, DUTY)  # the officer serves groups 1 and 2
    assert route.kind == "village"
    rung = {p.phone: p for p in route.recipients}
    assert ASSISTANT not in rung and rung[NEIGHBOUR_OFFICER].role == "assistant"
    assert [p.phone for p in route.absent] == [ASSISTANT]


def test_without_a_start_an_absence_begins_now_or_keeps_the_start_it_had() -> None:
    from_now = SetAbsence(phone=OFFICER, starts=None, until=at(8 * HOUR), substitute=NEIGHBOUR_OFFICER)
    (first,) = decide_member(member(), from_now, at(HOUR))
    assert isinstance(first, AbsenceSet) and first.starts == at(HOUR)
    state = folded([first])
    assert decide_member(member(absence=state), from_now, at(2 * HOUR)) == [], "the same request again"
    longer = msgspec.structs.replace(from_now, until=at(10 * HOUR))
    (extended,) = decide_member(member(absence=state), longer, at(2 * HOUR))
    assert isinstance(extended, AbsenceSet) and extended.starts == at(HOUR), "a changed end keeps the start"
    planned = folded(decide_member(member(), set_cmd(5 * HOUR, 8 * HOUR), at(0)))
    (now_instead,) = decide_member(member(absence=planned), from_now, at(HOUR))
    assert isinstance(now_instead, AbsenceSet) and now_instead.starts == at(HOUR), "one not begun starts now"


def test_a_note_that_could_turn_the_screen_around_is_refused() -> None:
    sneaky = msgspec.structs.replace(set_cmd(0, HOUR), note="年假\u202e")
    with pytest.raises(InvalidCommand, match="control, format"):
        decide_member(member(), sneaky, at(0))
    uyghur = msgspec.structs.replace(set_cmd(0, HOUR), substitute_name="ئە\u200cخمەت")
    assert decide_member(member(), uyghur, at(0))
