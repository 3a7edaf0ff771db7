"""Who did what: every answer names its actor, a proxy answer says so, and cover counts people
(two different actors), not clicks; a relaxed cover says what actually happened."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.access import Principal
from dispatch.domain.errors import InvalidCommand, InvalidTransition, NotPermitted
from dispatch.domain.incident import (
    DEFAULT_QUORUM,
    Answered,
    IncidentState,
    Respond,
    actor_key,
    cover_by,
    decide,
    evolve,
    fold,
    open_incident,
    parse_quorum,
    route_call,
)
from dispatch.domain.messages import describe
from dispatch.events import codec
from dispatch.events.model import (
    Actor,
    Event,
    IncidentCovered,
    ResponderAccepted,
    VillageSettingsChanged,
)

from .fixtures import at, directory_with
from .test_incident import ASSISTANT, DUTY, HOUSEHOLD, LEADER, OFFICER, STATION, apply, call

POLICY = parse_quorum(DEFAULT_QUORUM)
SECOND_LEADER = "+8613800000018"

OFFICER_TOKEN = Principal(
    token_id="t-off", name="吴建军", role="officer", villages=frozenset({"dongshan"}), station=None, phone=OFFICER
)
DUTY_TOKEN = Principal(
    token_id="t-duty", name="城关所值班室", role="duty_desk", villages=frozenset(), station=STATION, phone=STATION
)
ADMIN_TOKEN = Principal(token_id="t-adm", name="县局管理员", role="admin", villages=frozenset(), station=None)


def raised(caller: str = HOUSEHOLD, *, proxy_counts: bool | None = None) -> IncidentState:
    directory = directory_with()
    if proxy_counts is not None:
        directory.apply(VillageSettingsChanged(at=at(), village="dongshan", proxy_counts=proxy_counts), 10_000)
    route = route_call(directory, call(caller), POLICY, DUTY)
    state = evolve(None, open_incident(route, call(caller), 0))
    assert state is not None
    return state


def keypad(phone: str) -> Actor:
    return Actor(channel="keypad", phone=phone)


def answer(
    state: IncidentState, who: str, action: str, actor: Actor | None, seconds: float = 1, category: str | None = None
) -> list[Event]:
    command = Respond(incident_id=state.id, responder=who, action=action, actor=actor, category=category)  # type: ignore[arg-type]
    return decide(state, command, at(seconds))


def test_one_officer_token_answering_for_the_leader_then_for_itself_does_not_cover() -> None:
    state = raised()
    token = OFFICER_TOKEN.actor("console")
    for_leader = answer(state, LEADER, "accept", token)
    assert [type(e) for e in for_leader] == [ResponderAccepted]
    [accepted] = for_leader
    assert isinstance(accepted, ResponderAccepted) and accepted.proxy and accepted.actor == token
    state = apply(state, for_leader)
    own = answer(state, OFFICER, "accept", token, seconds=2)
    assert [type(e) for e in own] == [ResponderAccepted], "one token met both halves of the quorum"
    assert not own[0].proxy  # type: ignore[attr-defined]
    state = apply(state, own)
    assert not state.covered
    # the leader then presses 1 on their own phone: a second person, the incident is covered
    leader_own = answer(state, LEADER, "accept", keypad(LEADER), seconds=3)
    assert [type(e) for e in leader_own] == [ResponderAccepted, IncidentCovered]
    covered = leader_own[1]
    assert isinstance(covered, IncidentCovered) and covered.kind == "full" and not covered.by_proxy
    state = apply(state, leader_own)
    assert state.covered and state.responders[LEADER].own_accept
    assert answer(state, LEADER, "accept", keypad(LEADER), seconds=4) == [], "a repeated own accept is idempotent"


def test_one_phone_never_meets_both_halves_either() -> None:
    state = raised()
    officer_phone = keypad(OFFICER)
    state = apply(state, answer(state, OFFICER, "accept", officer_phone))
    events = answer(state, ASSISTANT, "accept", Actor(channel="sms", phone=OFFICER), seconds=2)
    assert [type(e) for e in events] == [ResponderAccepted]


def test_a_duty_desk_taking_the_leaders_answer_by_phone_covers_with_the_officers_own() -> None:
    state = raised()
    desk = DUTY_TOKEN.actor("console")
    state = apply(state, answer(state, LEADER, "accept", desk))
    events = answer(state, OFFICER, "accept", keypad(OFFICER), seconds=2)
    assert [type(e) for e in events] == [ResponderAccepted, IncidentCovered]
    assert events[1].by_proxy  # type: ignore[attr-defined]


def test_a_proxy_answer_names_who_recorded_it_in_the_timeline() -> None:
    state = raised()
    [event] = answer(state, LEADER, "accept", OFFICER_TOKEN.actor("console"))
    people = {p: r.person for p, r in state.responders.items()}
    assert describe(event, people) == "黄志强（联防组长） 已接警（由吴建军代为登记）"


def test_a_village_may_refuse_proxy_answers_toward_cover() -> None:
    state = raised(proxy_counts=False)
    assert state.opened.proxy_counts is False
    state = apply(state, answer(state, LEADER, "accept", DUTY_TOKEN.actor()))
    events = answer(state, OFFICER, "accept", keypad(OFFICER), seconds=2)
    assert [type(e) for e in events] == [ResponderAccepted], "a proxy answer counted although the village said no"
    state = apply(state, events)
    events = answer(state, LEADER, "accept", keypad(LEADER), seconds=3)
    assert [type(e) for e in events] == [ResponderAccepted, IncidentCovered]


def test_resolve_and_cancel_record_their_actor() -> None:
    state = raised()
    resolved = answer(state, OFFICER, "resolve", ADMIN_TOKEN.actor("cli"), category="dispute")
    resolved_event = resolved[0]
    assert resolved_event.actor == ADMIN_TOKEN.actor("cli") and resolved_event.proxy  # type: ignore[attr-defined]
    cancelled = answer(state, HOUSEHOLD, "cancel", keypad(HOUSEHOLD))
    assert cancelled[0].actor == keypad(HOUSEHOLD) and not cancelled[0].proxy  # type: ignore[attr-defined]


def test_an_event_stored_before_actors_decodes_as_legacy_and_still_folds() -> None:
    state = raised()
    old = b'{"at":"2026-11-24T20:00:01Z","incident_id":"%s","phone":"%s","role":"leader","name":"","first":true}'
    event = codec.decode("ResponderAccepted", "1", old % (state.id.encode(), LEADER.encode()))
    assert isinstance(event, ResponderAccepted) and event.actor is None and not event.proxy
    state = apply(state, [event])
    assert actor_key(None, LEADER) == f"phone:{LEADER}"
    events = answer(state, OFFICER, "accept", keypad(OFFICER), seconds=2)
    assert [type(e) for e in events] == [ResponderAccepted, IncidentCovered], "a legacy accept is its responder's own"
    people = {p: r.person for p, r in state.responders.items()}
    assert describe(event, people) == "黄志强（联防组长） 已接警"


def test_the_leader_calling_in_a_group_without_an_assistant_is_a_relaxed_cover_and_says_so() -> None:
    state = raised(caller=SECOND_LEADER)
    assert state.opened.quorum == (("officer",),)
    assert state.opened.relaxed == (("leader", "assistant"),)
    events = answer(state, OFFICER, "accept", keypad(OFFICER))
    covered = events[-1]
    assert isinstance(covered, IncidentCovered) and covered.kind == "relaxed"
    text = describe(covered, {}, opened=state.opened)
    assert "组长为报警人，民警接警即覆盖" in text
    assert "均已接警" not in text


def test_a_full_cover_still_says_both_halves() -> None:
    state = raised()
    state = apply(state, answer(state, LEADER, "accept", keypad(LEADER)))
    covered = answer(state, OFFICER, "accept", keypad(OFFICER), seconds=2)[-1]
    assert isinstance(covered, IncidentCovered) and covered.kind == "full" and covered.relaxed == ()
    assert describe(covered, {}, opened=state.opened) == "已覆盖：民警与组长/助理均已接警"


def test_an_old_cover_of_a_leader_call_is_told_relaxed_from_its_quorum() -> None:
    state = raised(caller=SECOND_LEADER)
    legacy_open = msgspec.structs.replace(state.opened, relaxed=None)
    old = IncidentCovered(at=at(2), incident_id=state.id, accepted_by=(OFFICER,))
    assert "组长为报警人" in describe(old, {}, opened=legacy_open)


ACTORS = st.sampled_from(
    [
        None,
        keypad(OFFICER),
        keypad(LEADER),
        keypad(ASSISTANT),
        OFFICER_TOKEN.actor("console"),
        DUTY_TOKEN.actor("console"),
        ADMIN_TOKEN.actor("api"),
    ]
)
PEOPLE = st.sampled_from([OFFICER, LEADER, ASSISTANT, HOUSEHOLD, STATION])
ACTIONS = st.sampled_from(["accept", "accept", "accept", "decline", "arrived"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(PEOPLE, ACTIONS, ACTORS), max_size=14), st.booleans())
def test_cover_always_rests_on_two_different_actors(
    answers: list[tuple[str, str, Actor | None]], proxy_counts: bool
) -> None:
    state = raised(proxy_counts=proxy_counts)
    log: list[Event] = [state.opened]
    for i, (who, action, actor) in enumerate(answers):
        try:
            events = answer(state, who, action, actor, seconds=i + 1)
        except (NotPermitted, InvalidTransition, InvalidCommand):
            continue
        for event in events:
            if isinstance(event, ResponderAccepted):
                assert event.proxy == (actor is not None and actor.phone != who)
                assert event.actor == actor
        log.extend(events)
        state = apply(state, events)
    covered = [e for e in log if isinstance(e, IncidentCovered)]
    assert len(covered) <= 1
    accepts = [e for e in log if isinstance(e, ResponderAccepted)]
    counted = [
        Answered(phone=e.phone, role=e.role, actor=actor_key(e.actor, e.phone), proxy=e.proxy)
        for e in accepts
        if proxy_counts or not e.proxy
    ]
    # covered exactly when some officer accept and some leader/assistant accept came from two actors
    possible = any(
        a.role == "officer" and b.role in ("leader", "assistant") and a.actor != b.actor
        for a in counted
        for b in counted
    )
    assert bool(covered) == possible
    if covered:
        trigger = log.index(covered[0]) - 1
        assert isinstance(log[trigger], ResponderAccepted), "cover follows the accept that met it"
        earlier = [
            Answered(phone=e.phone, role=e.role, actor=actor_key(e.actor, e.phone), proxy=e.proxy)
            for e in log[:trigger]
            if isinstance(e, ResponderAccepted)
        ]
        assert cover_by(state.opened.quorum, earlier, proxy_counts=proxy_counts) is None, "cover was decided late"
    if len({actor_key(e.actor, e.phone) for e in accepts}) <= 1:
        assert not covered, "one actor covered an incident"
    refolded = fold(log)
    assert refolded is not None and refolded.covered_at == state.covered_at


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["officer", "leader", "assistant", "household"]),
            st.sampled_from(["a", "b", "c"]),
            st.booleans(),
        ),
        max_size=8,
    )
)
def test_cover_by_matches_distinct_actors_to_every_clause(answers: list[tuple[str, str, bool]]) -> None:
    given_ = [Answered(phone=f"+86{i}", role=r, actor=a, proxy=p) for i, (r, a, p) in enumerate(answers)]  # type: ignore[arg-type]
    met = cover_by(POLICY, given_)
    if met is not None:
        assert len(met) == 2 and met[0].role == "officer" and met[1].role in ("leader", "assistant")
        assert met[0].actor != met[1].actor
    else:
        assert not any(
            a.role == "officer" and b.role in ("leader", "assistant") and a.actor != b.actor
            for a in given_
            for b in given_
        )


def reported(caller: str, group: str, *, proxy_counts: bool | None = None) -> IncidentState:
    """An incident an officer opens for `group` (a walk-in), the caller as told."""
    directory = directory_with()
    if proxy_counts is not None:
        directory.apply(VillageSettingsChanged(at=at(), village="dongshan", proxy_counts=proxy_counts), 10_000)
    incoming = msgspec.structs.replace(call(caller), call_id="report:r1", for_group=("dongshan", group))
    state = evolve(None, open_incident(route_call(directory, incoming, POLICY, DUTY), incoming, 0))
    assert state is not None
    return state


def test_an_officer_s_report_follows_the_village_s_proxy_setting_and_says_a_relaxed_cover() -> None:
    refused = reported(HOUSEHOLD, "1", proxy_counts=False)
    assert refused.opened.line.startswith("report.")
    assert refused.opened.proxy_counts is False, "a report counted proxy answers although the village said no"
    state = reported(SECOND_LEADER, "2")
    assert state.opened.quorum == (("officer",),)
    assert state.opened.relaxed == (("leader", "assistant"),), "a report's relaxed cover was not recorded"
    covered = answer(state, OFFICER, "accept", keypad(OFFICER))[-1]
    assert isinstance(covered, IncidentCovered) and covered.kind == "relaxed"
