from __future__ import annotations

import pytest

from dispatch.domain.directory import Directory
from dispatch.domain.roster import RosterRejected, parse_roster, plan_import
from dispatch.events.model import MemberBound, MemberRenamed, MemberUnbound, RoleAssigned

from .fixtures import ROSTER, T0, directory_with


def test_first_import_forms_groups_and_binds_every_row() -> None:
    plan = plan_import(Directory(), parse_roster(ROSTER), T0)
    assert plan.groups_formed == 2
    assert plan.members_bound == 13
    assert plan.duty_desks_bound == 1
    assert [c.subject for c in plan.changes] == [
        "dispatch.evt.group.dongshan.1",
        "dispatch.evt.group.dongshan.2",
        "dispatch.evt.village.dongshan",
    ]
    assert all(c.expected_seq == 0 for c in plan.changes)


def test_numbers_are_stored_as_e164() -> None:
    rows = parse_roster(ROSTER)
    assert rows[0].phone == "+8613800000001"
    assert rows[-1].phone == "+8673184512345"


def test_reimporting_the_same_file_changes_nothing() -> None:
    directory = directory_with()
    plan = plan_import(directory, parse_roster(ROSTER), T0)
    assert plan.changes == []
    assert plan.groups_unchanged == 2


def test_a_changed_file_records_only_the_differences() -> None:
    directory = directory_with()
    changed = (
        ROSTER.replace("dongshan,1,13800000007,household,杨淑芬\n", "")
        .replace("13800000006,household,陈永福", "13800000006,household,陈永富")
        .replace("13900000001,assistant,周丽", "13900000001,officer,周丽")
        + "dongshan,2,13800000012,household,钱小梅\n"
    )
    plan = plan_import(directory, parse_roster(changed), T0)
    events = [e for c in plan.changes for e in c.events]
    assert sorted(type(e).__name__ for e in events) == [
        "MemberBound",
        "MemberRenamed",
        "MemberUnbound",
        "RoleAssigned",
    ]
    by_type = {type(e): e for e in events}
    assert by_type[MemberUnbound].phone == "+8613800000007"  # type: ignore[attr-defined]
    assert by_type[MemberRenamed].name == "陈永富"  # type: ignore[attr-defined]
    assert by_type[RoleAssigned].role == "officer"  # type: ignore[attr-defined]
    assert by_type[MemberBound].group == "2"  # type: ignore[attr-defined]
    group1 = directory.groups["dongshan.1"]
    assert [c.expected_seq for c in plan.changes if c.subject.endswith("dongshan.1")] == [group1.last_seq]


def errors_of(text: str, directory: Directory | None = None) -> list[tuple[int, str]]:
    with pytest.raises(RosterRejected) as info:
        plan_import(directory or Directory(), parse_roster(text), T0)
    return [(e.line, e.message) for e in info.value.errors]


def parse_errors(text: str) -> list[tuple[int, str]]:
    with pytest.raises(RosterRejected) as info:
        parse_roster(text)
    return [(e.line, e.message) for e in info.value.errors]


def test_every_row_error_is_reported_with_its_line() -> None:
    text = (
        "village,group,phone,role,name\n"
        "dongshan,1,12345,household,甲\n"
        "dongshan,1,13800000002,chief,乙\n"
        "dong shan,1,13800000003,household,丙\n"
        "dongshan,,13800000004,household,丁\n"
        "dongshan,1,13800000005,duty,戊\n"
        "dongshan,1,13800000006\n"
    )
    errors = parse_errors(text)
    assert [line for line, _ in errors] == [2, 3, 4, 5, 6, 7]
    assert "not a valid phone number" in errors[0][1]
    assert "role 'chief'" in errors[1][1]
    assert "village 'dong shan'" in errors[2][1]
    assert "group ''" in errors[3][1]
    assert "duty row must have an empty group" in errors[4][1]
    assert "expected 5 columns, found 3" in errors[5][1]


def test_bad_header_and_empty_file_are_rejected() -> None:
    assert parse_errors("phone,name\n13800000001,甲\n")[0][0] == 1
    assert "empty file" in parse_errors("\n\n")[0][1]


def test_group_rules_are_checked() -> None:
    rows = "".join(f"v,big,138000001{i:02d},household,h{i}\n" for i in range(10))
    text = (
        "village,group,phone,role,name\n"
        + rows
        + "v,big,13900000001,leader,L\n"
        + "v,big,13900000002,officer,O\n"
        + "v,noleader,13700000001,officer,O\n"
        + "v,twoleaders,13700000002,leader,A\n"
        + "v,twoleaders,13700000003,leader,B\n"
        + "v,twoleaders,13700000004,officer,O\n"
        + "v,twoleaders,13700000004,household,O\n"
    )
    errors = errors_of(text)
    messages = " | ".join(m for _, m in errors)
    assert "group v/big has 12 numbers; at most 10" in messages
    assert "group v/noleader has no leader" in messages
    assert (16, "group v/twoleaders already has a leader at line 15") in errors
    assert "+8613700000004 already listed in group v/twoleaders at line 17" in messages


def test_group_without_officer_is_rejected() -> None:
    errors = errors_of("village,group,phone,role,name\nv,1,13700000001,leader,A\n")
    assert errors == [(2, "group v/1 has no officer; at least one community officer is needed")]


def test_household_belongs_to_one_group_only_but_officers_may_serve_several() -> None:
    text = (
        "village,group,phone,role,name\n"
        "v,1,13700000001,leader,A\n"
        "v,1,13700000009,officer,O\n"
        "v,2,13700000001,household,A\n"
        "v,2,13700000002,leader,B\n"
        "v,2,13700000009,officer,O\n"
    )
    errors = errors_of(text)
    assert len(errors) == 1
    assert errors[0][0] == 4 and "belongs to one group only" in errors[0][1]


def test_household_already_in_another_group_of_the_directory_is_rejected() -> None:
    directory = directory_with()
    text = "village,group,phone,role,name\nxishan,1,13800000001,leader,张桂兰\nxishan,1,13900000009,officer,吴警官\n"
    errors = errors_of(text, directory)
    assert errors[0][0] == 2
    assert "already a household in group dongshan/1" in errors[0][1]


def test_duty_desks_follow_the_file_for_villages_it_lists() -> None:
    directory = directory_with()
    text = "village,group,phone,role,name\ndongshan,,073184599999,duty,新值班室\n"
    plan = plan_import(directory, parse_roster(text), T0)
    names = sorted(type(e).__name__ for c in plan.changes for e in c.events)
    assert names == ["DutyDeskBound", "DutyDeskUnbound"]
