"""Hostile input to the pure code, with hypothesis: any caller string is routed (never dropped), any
roster text is parsed or refused line by line (never a crash), any stored bytes decode to an event or
UnknownEvent, and a flood of repeat calls keeps an incident's invariants."""

from __future__ import annotations

import re
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.incident import REALERT_INTERVAL, evolve, incident_id_for, repeat_call, route_call
from dispatch.domain.phone import try_normalize
from dispatch.domain.roster import RosterRejected, parse_roster
from dispatch.events import codec
from dispatch.events.model import CallRepeated, Person
from dispatch.events.subjects import line_subject

from .fixtures import directory_with
from .test_incident import DUTY, POLICY, call, raised

SUBJECT = re.compile(r"^[\w.-]+$")
GROUP_ONE = [f"+86138000000{i:02d}" for i in range(1, 9)] + ["+8613900000001", "+8613900000009"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=64))
def test_any_caller_string_is_routed_somewhere_and_never_dropped(caller: str) -> None:
    route = route_call(directory_with(), call(caller), POLICY, DUTY)
    assert route.recipients, f"a call from {caller!r} alerts nobody"
    if route.kind == "unregistered":
        assert route.recipients == DUTY and route.line.startswith("caller.")
    assert SUBJECT.fullmatch(line_subject(route.line)), route.line
    incident_id_for(route.line, 0)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_roster_text_is_parsed_or_refused_with_lines_never_a_crash(text: str) -> None:
    try:
        rows = parse_roster(text)
    except RosterRejected as refused:
        assert refused.errors and all(e.line >= 1 and e.message for e in refused.errors)
        return
    assert all(row.phone.startswith("+") and try_normalize(row.phone) == row.phone for row in rows)


def test_rosters_with_carriage_returns_or_nul_bytes_are_read_or_refused() -> None:
    mac = "village,group,phone,role,name\rdongshan,1,13800000001,leader,甲\rdongshan,1,13900000009,officer,乙\r"
    assert [r.phone for r in parse_roster(mac)] == ["+8613800000001", "+8613900000009"]
    for broken in ("village,group,phone,role,name\n\x00", 'village,group,phone,role,name\n"dongshan,1'):
        try:
            parse_roster(broken)
        except RosterRejected as refused:
            assert refused.errors
        else:
            raise AssertionError(f"{broken!r} was accepted")


@settings(max_examples=300, deadline=None)
@given(
    type_tag=st.one_of(st.none(), st.sampled_from([c.__name__ for c in codec.EVENT_TYPES.values()]), st.text()),
    schema=st.one_of(st.none(), st.sampled_from(["0", "1", "2", "x", ""])),
    body=st.one_of(st.binary(max_size=200), st.just(b'{"at": "2026-11-24T20:00:00Z"}')),
)
def test_any_stored_bytes_decode_to_an_event_or_unknown_event(
    type_tag: str | None, schema: str | None, body: bytes
) -> None:
    try:
        event = codec.decode(type_tag, schema, body)
    except codec.UnknownEvent:
        return
    assert type(event).__name__ == type_tag


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(GROUP_ONE), st.floats(min_value=0, max_value=20)), max_size=40))
def test_a_flood_of_repeats_raises_urgency_once_each_and_realerts_at_most_every_30s(
    calls: list[tuple[str, float]],
) -> None:
    state = raised()
    seconds = 0.0
    alerted = {r.person.phone: [0.0] for r in state.responders.values() if r.recipient}
    for n, (phone, gap) in enumerate(calls, start=1):
        seconds += gap
        caller = state.responders.get(phone)
        person = caller.person if caller else Person(phone=phone, name="", role="household")
        repeated = repeat_call(state, call(phone, f"r{n}", seconds), person)
        assert isinstance(repeated, CallRepeated) and repeated.urgency == state.urgency + 1
        assert phone not in {p.phone for p in repeated.realerted}, "the caller was rung back"
        for p in repeated.realerted:
            previous = alerted.setdefault(p.phone, [])
            assert not previous or seconds - previous[-1] >= REALERT_INTERVAL / timedelta(seconds=1), p.phone
            previous.append(seconds)
        new = evolve(state, repeated)
        assert new is not None
        state = new
    assert state.urgency == 1 + len(calls)
