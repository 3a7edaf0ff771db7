"""A member's language from the roster (issue 20, 3): the optional `language` (语言) column, its
events, the directory's fold and snapshot, the difference, and the alarm's recipients carrying it."""

from __future__ import annotations

import msgspec
import pytest

from dispatch.domain.directory import Directory, encode_snapshot
from dispatch.domain.incident import DEFAULT_QUORUM, IncomingCall, open_incident, parse_quorum, route_call
from dispatch.domain.phone import try_normalize
from dispatch.domain.roster import RosterRejected, difference, parse_roster, plan_import
from dispatch.events.model import MemberLanguageSet, Person, Place
from tests.rosters import ROSTER, placed

from .fixtures import T0, at, directory_with

ZHANG, LI, OFFICER = "+8613800000001", "+8613800000002", "+8613900000009"


def spoken(roster: str, languages: dict[str, str], *, chinese: bool = False) -> str:
    """`roster` with a language column, filled for the numbers of `languages`."""
    lines = roster.splitlines()
    out = [lines[0] + (",语言" if chinese else ",language")]
    out += [f"{line},{languages.get(line.split(',')[2], '')}" for line in lines[1:]]
    return "\n".join(out) + "\n"


def apply(directory: Directory, text: str) -> list[object]:
    plan = plan_import(directory, parse_roster(text), T0)
    events = [e for change in plan.changes for e in change.events]
    for seq, event in enumerate(events, start=directory.position + 1):
        directory.apply(event, seq)
    return events


def member(directory: Directory, phone: str) -> Person:
    return directory.memberships(phone)[0].person


@pytest.mark.parametrize("chinese", [False, True], ids=["english", "chinese"])
def test_a_roster_with_a_language_column_gives_its_members_one(chinese: bool) -> None:
    directory = directory_with(spoken(ROSTER, {"13800000001": "粤语", "13900000009": "yue"}, chinese=chinese))
    assert member(directory, ZHANG).language == "yue"
    assert member(directory, OFFICER).language == "yue"
    assert member(directory, LI).language == "", "an empty cell: Mandarin, the default"


def test_mandarin_is_the_default_and_is_never_recorded() -> None:
    directory = Directory()
    events = apply(directory, spoken(ROSTER, {"13800000001": "zh", "13800000002": "普通话"}))
    assert not any(isinstance(e, MemberLanguageSet) for e in events)
    assert msgspec.json.encode(member(directory, ZHANG)) == msgspec.json.encode(
        Person(phone=ZHANG, name="张桂兰", role="household")
    ), "a person without a language encodes as before"


def test_a_file_without_the_column_leaves_languages_and_one_without_places_leaves_places() -> None:
    directory = directory_with(placed(ROSTER))
    apply(directory, spoken(ROSTER, {"13800000001": "yue"}))
    assert member(directory, ZHANG).language == "yue"
    assert member(directory, ZHANG).place == Place(address="村东头老槐树旁", lat=28.228209, lon=112.938814)
    assert plan_import(directory, parse_roster(ROSTER), T0).changes == []
    assert plan_import(directory, parse_roster(spoken(ROSTER, {"13800000001": "粤语"})), T0).changes == []


def test_languages_are_diffed_and_an_empty_cell_sets_mandarin_again() -> None:
    directory = directory_with(spoken(ROSTER, {"13800000001": "yue"}))
    plan = plan_import(directory, parse_roster(spoken(ROSTER, {"13800000002": "cantonese"})), T0)
    events = [e for change in plan.changes for e in change.events]
    assert [(e.phone, e.language) for e in events if isinstance(e, MemberLanguageSet)] == [
        (ZHANG, ""),
        (LI, "yue"),
    ]
    assert plan.languages_set == 2
    diff = difference(plan)
    assert diff.counts["languages"] == 2
    assert {(m.phone, m.was, m.language) for m in diff.languages} == {(ZHANG, "yue", ""), (LI, "", "yue")}


@pytest.mark.parametrize("cell", ["en", "hak", "klingon"])
def test_a_language_no_voice_speaks_the_alarm_in_is_refused_with_its_line(cell: str) -> None:
    with pytest.raises(RosterRejected) as err:
        parse_roster(spoken(ROSTER, {"13800000001": cell}))
    [error] = err.value.errors
    assert error.line == 2 and f"language {cell!r} must be zh" in error.message and "yue" in error.message


def test_languages_survive_packing_rebinding_and_a_snapshot() -> None:
    directory = directory_with(spoken(ROSTER, {"13800000001": "yue"}))
    directory.compact()
    assert member(directory, ZHANG).language == "yue"
    restored, _ = Directory.restore(encode_snapshot(directory.snapshot("c", {"g": directory.position})))
    assert member(restored, ZHANG).language == "yue"
    apply(restored, ROSTER.replace("张桂兰", "张桂芝"))
    assert member(restored, ZHANG).language == "yue", "a rename keeps the language"
    apply(restored, "\n".join(line for line in ROSTER.splitlines() if "13800000001" not in line) + "\n")
    apply(restored, ROSTER)
    assert member(restored, ZHANG).language == "", "unbound and bound again: the default"


def test_the_alarm_s_recipients_carry_their_language_to_the_channels() -> None:
    directory = directory_with(spoken(ROSTER, {"13800000002": "yue"}))
    call = IncomingCall(
        call_id="c1",
        caller_raw=ZHANG,
        caller=try_normalize(ZHANG),
        callee="6995",
        channel="voice",
        called_at=at(0),
        at=at(0),
    )
    opened = open_incident(route_call(directory, call, parse_quorum(DEFAULT_QUORUM), ()), call, 0)
    languages = {p.phone: p.language for p in opened.recipients}
    assert languages[LI] == "yue" and languages[OFFICER] == ""
