"""Where a household lives (issue 22.5): the roster's optional place columns, the directory's fold
and snapshot, the difference, and the texts that say where."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.directory import Directory
from dispatch.domain.incident import Alert
from dispatch.domain.messages import alert_text_for, geo_uri, markdown_for, spoken_text_for, where_of
from dispatch.domain.roster import RosterRejected, difference, parse_roster, plan_import
from dispatch.events.model import MemberPlaced, Person, Place
from tests.rosters import ROSTER, placed

from .fixtures import T0, directory_with

ZHANG = "+8613800000001"


def apply(directory: Directory, text: str) -> None:
    plan = plan_import(directory, parse_roster(text), T0)
    seq = directory.position
    for change in plan.changes:
        for event in change.events:
            seq += 1
            directory.apply(event, seq)


def caller(directory: Directory, phone: str = ZHANG) -> Person:
    return directory.memberships(phone)[0].person


@pytest.mark.parametrize("chinese", [False, True], ids=["english", "chinese"])
def test_a_roster_with_place_columns_places_its_members(chinese: bool) -> None:
    directory = directory_with(placed(ROSTER, chinese=chinese))
    assert caller(directory).place == Place(address="村东头老槐树旁", lat=28.228209, lon=112.938814)
    assert caller(directory, "+8613800000002").place == Place(address="村委会对面")
    assert caller(directory, "+8613800000003").place is None


def test_an_old_roster_without_the_columns_leaves_places_alone() -> None:
    directory = directory_with(placed(ROSTER))
    plan = plan_import(directory, parse_roster(ROSTER), T0)
    assert plan.changes == [] and plan.members_placed == 0
    assert caller(directory).place is not None


def test_places_are_diffed_and_an_empty_cell_clears_one() -> None:
    directory = directory_with(placed(ROSTER))
    moved = {"13800000001": ("村西头晒谷场", "28.2", "112.9")}
    plan = plan_import(directory, parse_roster(placed(ROSTER, moved)), T0)
    events = [e for c in plan.changes for e in c.events]
    assert all(isinstance(e, MemberPlaced) for e in events)
    assert {e.phone: e.place for e in events if isinstance(e, MemberPlaced)} == {
        ZHANG: Place(address="村西头晒谷场", lat=28.2, lon=112.9),
        "+8613800000002": None,
    }
    diff = difference(plan)
    assert diff.counts["placed"] == 2
    assert {(m.phone, m.was, m.address) for m in diff.placed} == {
        (ZHANG, "村东头老槐树旁", "村西头晒谷场"),
        ("+8613800000002", "村委会对面", ""),
    }
    apply(directory, placed(ROSTER, moved))
    assert caller(directory, "+8613800000002").place is None
    assert caller(directory).place == Place(address="村西头晒谷场", lat=28.2, lon=112.9)


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        (("x", "28.1", ""), "both coordinates"),
        (("x", "north", "east"), "not numbers"),
        (("x", "91", "112"), "out of range"),
        (("a" * 129, "", ""), "address longer"),
        (("x\u202e", "", ""), "U+202E"),
    ],
)
def test_a_bad_place_is_refused_with_its_line(cells: tuple[str, str, str], message: str) -> None:
    with pytest.raises(RosterRejected) as err:
        parse_roster(placed(ROSTER, {"13800000001": cells}))
    assert [(e.line, message in e.message) for e in err.value.errors] == [(2, True)]


def test_an_unknown_extra_column_is_a_header_error() -> None:
    text = ROSTER.replace("village,group,phone,role,name", "village,group,phone,role,name,colour", 1)
    with pytest.raises(RosterRejected) as err:
        parse_roster(text)
    assert err.value.errors[0].line == 1 and "address, lat, lon" in err.value.errors[0].message


def test_places_survive_packing_and_a_snapshot() -> None:
    from dispatch.domain.directory import encode_snapshot

    directory = directory_with(placed(ROSTER))
    directory.compact()
    assert caller(directory).place is not None
    restored, _ = Directory.restore(encode_snapshot(directory.snapshot("c", {"g": directory.position})))
    assert caller(restored).place == Place(address="村东头老槐树旁", lat=28.228209, lon=112.938814)
    apply(restored, ROSTER.replace("张桂兰", "张桂芝"))
    assert caller(restored).place is not None, "a rename keeps the place"


place_cells = st.tuples(
    st.sampled_from(["", "村东头老槐树旁", "晒谷场边", "2号院"]),
    st.one_of(st.none(), st.tuples(st.floats(-90, 90), st.floats(-180, 180))),
)


@settings(max_examples=60, deadline=None)
@given(
    first=st.dictionaries(st.sampled_from(["13800000001", "13800000002", "13800000011"]), place_cells),
    second=st.dictionaries(st.sampled_from(["13800000001", "13800000002", "13800000011"]), place_cells),
)
def test_the_directory_holds_exactly_the_last_file_s_places_and_replanning_is_empty(
    first: dict[str, tuple[str, tuple[float, float] | None]],
    second: dict[str, tuple[str, tuple[float, float] | None]],
) -> None:
    def cells(places: dict[str, tuple[str, tuple[float, float] | None]]) -> dict[str, tuple[str, str, str]]:
        return {p: (a, repr(c[0]) if c else "", repr(c[1]) if c else "") for p, (a, c) in places.items()}

    directory = Directory()
    for places in (first, second):
        apply(directory, placed(ROSTER, cells(places)))
    for phone in ("13800000001", "13800000002", "13800000011"):
        address, coords = second.get(phone, ("", None))
        want = (
            None
            if not address and coords is None
            else Place(address=address, lat=coords[0] if coords else None, lon=coords[1] if coords else None)
        )
        assert caller(directory, "+86" + phone).place == want
    assert plan_import(directory, parse_roster(placed(ROSTER, cells(second))), T0).changes == []


def alert(person: Person, reason: str = "raised") -> Alert:
    return Alert(
        incident_id="i",
        village="东山村",
        group="1",
        caller=person,
        recipients=(person,),
        reason=reason,  # type: ignore[arg-type]
        registered=True,
        urgency=1,
        raised_at=datetime(2026, 12, 4, tzinfo=UTC),
    )


def test_the_alarm_says_where_in_text_speech_robots_and_a_geo_link() -> None:
    zhang = Person(
        phone=ZHANG, name="张桂兰", role="household", place=Place(address="村东头老槐树旁", lat=28.2282, lon=112.9388)
    )
    assert where_of("东山村", "1", zhang) == "东山村1组 张桂兰家，村东头老槐树旁"
    assert "东山村1组 张桂兰家，村东头老槐树旁" in alert_text_for(alert(zhang))
    assert "东山村1组张桂兰家，村东头老槐树旁" in spoken_text_for(alert(zhang))
    assert geo_uri(zhang) == "geo:28.2282,112.9388"
    assert "(geo:28.2282,112.9388)" in markdown_for(alert(zhang), "http://console")
    bare = Person(phone=ZHANG, name="张桂兰", role="household")
    assert "地点" not in alert_text_for(alert(bare)) and geo_uri(bare) == ""
