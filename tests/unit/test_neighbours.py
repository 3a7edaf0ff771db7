"""Neighbouring groups (issue 22.1) in the domain: who a group's neighbours are, when their leaders
and assistants are alerted (the ack deadline passing uncovered, or the group's reachable members no
longer able to meet the quorum), alongside or before the station as the village chooses, and when a
neighbour's accept covers as the leader half."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.absence import MemberState, SetAbsence, decide_member
from dispatch.domain.directory import DEFAULT_NEIGHBOUR_GROUPS, Directory
from dispatch.domain.errors import NotPermitted
from dispatch.domain.incident import (
    DEFAULT_QUORUM,
    CheckUnreachable,
    FireTimer,
    IncidentState,
    IncomingCall,
    Line,
    Respond,
    alert_for,
    deadlines_after,
    decide,
    decide_call,
    evolve,
    open_incident,
    parse_quorum,
    route_call,
)
from dispatch.domain.messages import alert_text_for, describe, spoken_text_for
from dispatch.events import msgids
from dispatch.events.model import (
    AlarmRaised,
    CallRouted,
    DeliveryFailed,
    Event,
    GroupDissolved,
    IncidentCovered,
    IncidentEscalated,
    NeighboursAlerted,
    Person,
    ResponderAccepted,
    Unreached,
    VillageSettingsChanged,
)
from tests.rosters import group_officer, group_phone, numbered_groups

from .fixtures import at, directory_with

POLICY = parse_quorum(DEFAULT_QUORUM)
DUTY = (Person(phone="+8610110", name="县局值班", role="duty"),)
CENTRE = Person(phone="+8610110110", name="指挥中心", role="command_centre")


def e164(national: str) -> str:
    return "+86" + national


CALLER = e164(group_phone(1, 1))
LEADER1, ASSISTANT1, OFFICER1 = e164(group_phone(1, 8)), e164(group_phone(1, 9)), e164(group_officer(1))
NEIGHBOURS = {e164(group_phone(g, r)) for g in (2, 3) for r in (8, 9)}


def directory(order: str | None = "alongside", covers: bool | None = None, named: Any = None) -> Directory:
    d = directory_with(numbered_groups("nb", [1, 2, 3]))
    settings_ = VillageSettingsChanged(
        at=at(0),
        village="nb",
        neighbours_order=order,
        neighbour_covers=covers,
        neighbours=named,  # type: ignore[arg-type]
    )
    d.apply(settings_, 10_000)
    return d


def raised(d: Directory) -> IncidentState:
    call = IncomingCall(
        call_id="c1", caller_raw=CALLER, caller=CALLER, callee="6995", channel="voice", called_at=at(0), at=at(0)
    )
    state = evolve(None, open_incident(route_call(d, call, POLICY, DUTY), call, 0))
    assert state is not None
    return state


def fold_into(state: IncidentState, events: list[Event]) -> IncidentState:
    for event in events:
        folded = evolve(state, event)
        assert folded is not None
        state = folded
    return state


def test_a_groups_neighbours_are_the_other_groups_leaders_and_assistants_by_default_or_as_named() -> None:
    opened = raised(directory()).opened
    assert {p.phone for p in opened.neighbours} == NEIGHBOURS
    assert set(opened.neighbour_groups) == {"2", "3"} and len(opened.neighbour_groups) == len(opened.neighbours)
    assert all(p.role in ("leader", "assistant") for p in opened.neighbours)
    assert not {p.phone for p in opened.neighbours} & {p.phone for p in opened.recipients}
    only_two = raised(directory(named={"1": ("2",)})).opened
    assert set(only_two.neighbour_groups) == {"2"}
    assert raised(directory(order="off")).opened.neighbours == (), "a village may turn them off"


def test_in_a_large_village_the_default_neighbours_are_the_nearest_groups_in_their_numbering() -> None:
    """Not every group of a village of twelve (or of two thousand): the next and the previous first,
    by number (10 after 9), at most DEFAULT_NEIGHBOUR_GROUPS; a dissolved group is passed over; a
    village's own list still names any number."""
    d = directory_with(numbered_groups("big", range(1, 13)))
    assert DEFAULT_NEIGHBOUR_GROUPS == 4
    nearest = {g: [n.group for n in d.neighbour_groups("big", g)] for g in ("1", "6", "9", "12")}
    assert nearest == {
        "1": ["2", "3", "4", "5"],
        "6": ["7", "5", "8", "4"],
        "9": ["10", "8", "11", "7"],
        "12": ["11", "10", "9", "8"],
    }
    d.apply(GroupDissolved(at=at(1), village="big", group="7"), 20_000)
    assert [n.group for n in d.neighbour_groups("big", "6")] == ["5", "8", "4", "9"]
    d.apply(VillageSettingsChanged(at=at(2), village="big", neighbours={"6": tuple(map(str, range(1, 13)))}), 20_001)
    assert len(d.neighbour_groups("big", "6")) == 10, "as named: all but itself and the dissolved one"


def test_a_village_that_chose_nothing_has_its_neighbours_alongside_the_station() -> None:
    d = directory_with(numbered_groups("nb", [1, 2, 3]))
    assert d.neighbours_order("nb") == "alongside" and d.neighbour_covers("nb") is False
    opened = raised(d).opened
    assert opened.neighbours_order == "alongside" and {p.phone for p in opened.neighbours} == NEIGHBOURS
    assert raised(directory(order=None)).opened.neighbours_order == "alongside", "null: the service default"


def test_alongside_the_ack_deadline_alerts_the_neighbours_and_the_station_together() -> None:
    state = raised(directory("alongside"))
    events = decide(state, FireTimer(incident_id=state.id, timer="ack", command_centre=CENTRE), at(61))
    assert [type(e).__name__ for e in events] == ["NeighboursAlerted", "IncidentEscalated"]
    neighbours = events[0]
    assert isinstance(neighbours, NeighboursAlerted) and neighbours.reason == "ack_deadline"
    assert {p.phone for p in neighbours.alerted} == NEIGHBOURS and neighbours.groups == ("2", "3")
    alert = alert_for(state.opened, neighbours, state)
    assert alert is not None and alert.reason == "neighbours"
    assert alert_text_for(alert).startswith("【邻组支援】nb1组本组规定时间内未落实接警"), alert_text_for(alert)
    assert "邻组支援" in spoken_text_for(alert)
    assert describe(neighbours, {}).startswith("邻组支援：本组规定时间内未落实接警，通知2组、3组组长/助理")


def test_before_the_station_waits_for_its_own_deadline() -> None:
    state = raised(directory("before"))
    ack = decide(state, FireTimer(incident_id=state.id, timer="ack", command_centre=CENTRE), at(61))
    assert [type(e).__name__ for e in ack] == ["NeighboursAlerted"]
    assert [t for t, _ in deadlines_after(state, "ack")] == ["station", "escalate"]
    state = fold_into(state, ack)
    assert decide(state, FireTimer(incident_id=state.id, timer="station"), at(119)) == [], "never early"
    station = decide(state, FireTimer(incident_id=state.id, timer="station"), at(120))
    assert len(station) == 1 and isinstance(station[0], IncidentEscalated) and station[0].tier == 1
    assert station[0].reason == "station_deadline"


def accept(state: IncidentState, phone: str, seconds: float) -> tuple[IncidentState, list[Event]]:
    events = decide(state, Respond(incident_id=state.id, responder=phone, action="accept"), at(seconds))
    return fold_into(state, events), events


def test_a_neighbours_accept_covers_as_the_leader_half_only_where_the_village_allows_it() -> None:
    neighbour = e164(group_phone(2, 8))
    for covers in (True, False):
        state = raised(directory("alongside", covers=covers))
        state, events = accept(state, neighbour, 70)
        accepted = events[0]
        assert isinstance(accepted, ResponderAccepted) and accepted.neighbour_group == "2"
        assert "（邻组2组） 已接警" in describe(
            accepted, {neighbour: Person(phone=neighbour, name="组长2", role="leader")}
        )
        state, events = accept(state, OFFICER1, 80)
        assert any(isinstance(e, IncidentCovered) for e in events) is covers
    state = raised(directory("alongside", covers=False))
    state, _ = accept(state, OFFICER1, 10)
    state, events = accept(state, LEADER1, 20)
    assert any(isinstance(e, IncidentCovered) for e in events), "the group's own leader still covers"


def failed_for(state: IncidentState, phone: str) -> IncidentState:
    notice = DeliveryFailed(
        at=at(1),
        incident_id=state.id,
        channel="voice",
        round=1,
        failures=(Unreached(phone=phone, address=phone, kind="permanent", reason="invalid"),),
        handed_at=at(1),
    )
    return fold_into(state, [notice])


def test_when_the_groups_reachable_members_cannot_meet_the_quorum_the_neighbours_are_alerted_at_once() -> None:
    state = raised(directory("before"))
    state = failed_for(state, LEADER1)
    assert decide(state, CheckUnreachable(incident_id=state.id), at(2)) == [], "the assistant can still cover"
    state = failed_for(state, ASSISTANT1)
    [alerted] = decide(state, CheckUnreachable(incident_id=state.id), at(3))
    assert isinstance(alerted, NeighboursAlerted) and alerted.reason == "quorum_unreachable"
    state = fold_into(state, [alerted])
    later = decide(state, FireTimer(incident_id=state.id, timer="ack", command_centre=CENTRE), at(61))
    assert not any(isinstance(e, NeighboursAlerted) for e in later), "alerted once"


ORDERS = st.sampled_from(("alongside", "before", "off"))


def away(d: Directory, *phones: str, substitute: str | None = None) -> Directory:
    for i, phone in enumerate(phones):
        command = SetAbsence(phone=phone, starts=at(-3600), until=at(3600), substitute=substitute)
        for event in decide_member(MemberState(phone=phone, bound=True), command, at(-3600)):
            d.apply(event, 20_000 + i)
    return d


def call_in(d: Directory, seconds: float = 0) -> list[Event]:
    call = IncomingCall(
        call_id="c1",
        caller_raw=CALLER,
        caller=CALLER,
        callee="6995",
        channel="voice",
        called_at=at(seconds),
        at=at(seconds),
    )
    return decide_call(Line(route_call(d, call, POLICY, DUTY), 0, None), call, at(seconds))


def test_when_the_leader_and_assistant_are_away_the_neighbours_are_rung_with_the_alarm() -> None:
    events = call_in(away(directory(), LEADER1, ASSISTANT1))
    assert [type(e).__name__ for e in events] == ["AlarmRaised", "NeighboursAlerted", "CallRouted"]
    opened, alerted, routed = events
    assert isinstance(opened, AlarmRaised) and isinstance(routed, CallRouted) and routed.status == "raised"
    assert isinstance(alerted, NeighboursAlerted) and alerted.reason == "quorum_unreachable"
    assert alerted.at == opened.at and {p.phone for p in alerted.alerted} == NEIGHBOURS
    ids = msgids.call("k")
    assert ids(1, alerted) == msgids.escalation(opened.incident_id)(0, alerted), "one id, whoever alerts them"
    state = fold_into(raised(away(directory(), LEADER1, ASSISTANT1)), [alerted])
    later = decide(state, FireTimer(incident_id=state.id, timer="ack", command_centre=CENTRE), at(61))
    assert [type(e).__name__ for e in later] == ["IncidentEscalated"], "alerted once; the station at its time"


def test_an_absence_the_group_can_still_cover_or_a_substitute_fills_rings_no_neighbour() -> None:
    assert [type(e).__name__ for e in call_in(away(directory(), LEADER1))] == ["AlarmRaised", "CallRouted"]
    substituted = away(directory(), LEADER1, ASSISTANT1, substitute=e164(group_phone(1, 2)))
    assert [type(e).__name__ for e in call_in(substituted)] == ["AlarmRaised", "CallRouted"]
    assert [type(e).__name__ for e in call_in(away(directory("off"), LEADER1, ASSISTANT1))] == [
        "AlarmRaised",
        "CallRouted",
    ], "a village that turned them off"


GROUP1 = (*(e164(group_phone(1, i)) for i in range(2, 10)), OFFICER1)


@settings(max_examples=150, deadline=None)
@given(ORDERS, st.sets(st.sampled_from(GROUP1), max_size=9))
def test_the_neighbours_are_rung_with_the_alarm_exactly_when_those_on_duty_cannot_meet_the_quorum(
    order: str, absent: set[str]
) -> None:
    events = call_in(away(directory(order), *sorted(absent)))
    opened = events[0]
    assert isinstance(opened, AlarmRaised)
    roles = {p.role for p in opened.recipients}
    reachable = "officer" in roles and bool({"leader", "assistant"} & roles)
    alerted = [e for e in events if isinstance(e, NeighboursAlerted)]
    assert len(alerted) == (0 if reachable or order == "off" else 1), (roles, order)
    assert all(e.reason == "quorum_unreachable" and e.at == opened.at for e in alerted)
    assert isinstance(events[-1], CallRouted)


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("timer"), st.sampled_from(("ack", "escalate", "arrival", "station")), st.integers(0, 600)),
        st.tuples(
            st.just("accept"),
            st.sampled_from((LEADER1, OFFICER1, e164(group_phone(2, 8)), e164(group_phone(3, 9)))),
            st.integers(0, 600),
        ),
        st.tuples(st.just("fail"), st.sampled_from((LEADER1, ASSISTANT1, OFFICER1)), st.integers(0, 600)),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(ORDERS, st.booleans(), STEPS)
def test_neighbours_are_alerted_at_most_once_only_uncovered_and_never_before_they_are_due(
    order: str, covers: bool, plan: list[tuple[str, str, int]]
) -> None:
    state = raised(directory(order, covers=covers))
    seen: list[Event] = []
    for kind, what, seconds in sorted(plan, key=lambda p: p[2]):
        if kind == "timer":
            events = decide(state, FireTimer(incident_id=state.id, timer=what, command_centre=CENTRE), at(seconds))  # type: ignore[arg-type]
        elif kind == "accept":
            try:
                events = decide(state, Respond(incident_id=state.id, responder=what, action="accept"), at(seconds))
            except NotPermitted:
                assert order == "off" and what not in (LEADER1, OFFICER1), "a neighbour answers where they are on"
                continue
        else:
            state = failed_for(state, what)
            events = decide(state, CheckUnreachable(incident_id=state.id), at(seconds))
        told = state.neighbours_alerted_at is not None or any(isinstance(e, NeighboursAlerted) for e in events)
        for event in events:
            if isinstance(event, NeighboursAlerted):
                assert not state.covered and order != "off"
                assert event.reason == "quorum_unreachable" or seconds >= 60, "never before the ack deadline"
                assert {p.phone for p in event.alerted} <= NEIGHBOURS
            if isinstance(event, IncidentEscalated) and event.tier == 1 and order == "before":
                assert told or event.reason == "officer_unreachable", "the neighbours before the station"
            seen.append(event)
        state = fold_into(state, events)
    assert sum(isinstance(e, NeighboursAlerted) for e in seen) <= 1
    tiers = [e.tier for e in seen if isinstance(e, IncidentEscalated)]
    assert len(tiers) == len(set(tiers)), "each tier once"


def test_a_groups_neighbours_and_their_alert_are_sealed_like_every_person() -> None:
    from dispatch.events import codec
    from dispatch.events.sealing import seal, unseal
    from tests.unit.test_sealing import MemoryKeys

    state = raised(directory("alongside"))
    [alerted, _] = decide(state, FireTimer(incident_id=state.id, timer="ack"), at(61))
    keys = MemoryKeys()
    opened = state.opened
    keys.add(*{p.phone for p in (*opened.recipients, *opened.duty_desks, *opened.neighbours, opened.caller)})
    keys.days.setdefault(state.opened.at.strftime("%Y%m%d"), keys.days["20261204"])
    for event in (state.opened, alerted):
        body = codec.encode(seal(event, keys))
        for phone in NEIGHBOURS:
            assert phone.removeprefix("+86").encode() not in body
        assert unseal(seal(event, keys), keys) == event
