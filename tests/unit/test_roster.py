from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.directory import Directory
from dispatch.domain.roster import (
    MAX_DUTY_DESKS,
    MAX_NAME,
    MAX_REPORTED_ERRORS,
    NAME_FORMAT_ALLOWED,
    DirectoryView,
    RosterRejected,
    RosterUnreadable,
    difference,
    parse_roster,
    plan_import,
    plan_roster,
    read_roster,
    refused_in_name,
    scan_roster,
)
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


# --- names that turn text around (issue 26, item 8) ------------------------------------------------

BIDI_AND_CONTROLS = [
    *(chr(c) for c in range(0x202A, 0x202F)),  # LRE RLE PDF LRO RLO
    *(chr(c) for c in range(0x2066, 0x206A)),  # LRI RLI FSI PDI
    "\u200e",  # LRM
    "\u200f",  # RLM
    "\u061c",  # ALM
    "\x00",
    "\x07",
    "\x1b",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\u200b",
    "\u00ad",
]


def refused_char() -> st.SearchStrategy[str]:
    """Any character a name may not hold: controls, format characters, line and paragraph separators."""
    return st.characters(
        whitelist_categories=("Cc", "Cf", "Zl", "Zp"), blacklist_characters=sorted(NAME_FORMAT_ALLOWED)
    ) | st.sampled_from(BIDI_AND_CONTROLS)


def name_char() -> st.SearchStrategy[str]:
    """Any character a name may hold (Han, Latin, Arabic, Mongolian, ideographic spaces, private use...)."""
    return st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Cs")) | st.sampled_from(
        sorted(NAME_FORMAT_ALLOWED)
    )


def roster_with_name(name: str, *, village: str = "dongshan", group: str = "1") -> str:
    out = io.StringIO()
    writer = csv.writer(out)  # "\r\n" lines: a name holding "\r" or "\n" is quoted
    writer.writerow(["village", "group", "phone", "role", "name"])
    writer.writerow([village, group, "13800000001", "leader", "甲"])
    writer.writerow([village, group, "13800000002", "household", name])
    writer.writerow([village, group, "13900000009", "officer", "乙"])
    return out.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.text(name_char(), min_size=1, max_size=30), refused_char(), st.text(name_char(), min_size=1, max_size=30))
def test_a_name_with_a_control_or_direction_character_is_refused_on_its_line(before: str, bad: str, after: str) -> None:
    name = f"x{before}{bad}{after}x"
    errors = parse_errors(roster_with_name(name))
    assert [line for line, _ in errors] == [3]
    assert errors[0][1].startswith(f"name holds U+{ord(bad):04X} "), errors
    assert errors[0][1].endswith("control, format and text-direction characters are not allowed")


@settings(max_examples=300, deadline=None)
@given(st.text(name_char(), min_size=1, max_size=MAX_NAME))
def test_any_other_name_is_kept_as_written(name: str) -> None:
    rows = parse_roster(roster_with_name(name))
    assert rows[1].name == name.strip()


def test_the_issues_reversed_number_is_refused_with_the_character_named() -> None:
    errors = parse_errors(roster_with_name("张三\u202e8613800000006+"))
    assert errors == [
        (
            3,
            "name holds U+202E RIGHT-TO-LEFT OVERRIDE: control, format and text-direction characters are not allowed",
        )
    ]
    assert refused_in_name("张三") is None and refused_in_name("Ayşe\u3000Öz") is None
    for joiner in NAME_FORMAT_ALLOWED:  # zero-width (non-)joiners and the Mongolian vowel separator spell names
        assert parse_roster(roster_with_name(f"a{joiner}b"))[1].name == f"a{joiner}b"


@settings(max_examples=200, deadline=None)
@given(refused_char(), st.sampled_from(["village", "group"]))
def test_villages_and_groups_refuse_them_too(bad: str, field: str) -> None:
    text = roster_with_name("丙", **{field: f"dong{bad}shan"})
    errors = parse_errors(text)
    assert {line for line, _ in errors} == {2, 3, 4}
    assert all(f"{field} " in message for _, message in errors)


# --- large files (issue 26, item 3) ---------------------------------------------------------------


def test_bytes_are_read_as_utf8_with_or_without_bom_or_as_gb18030_else_refused() -> None:
    expected = parse_roster(ROSTER)
    for raw in (ROSTER.encode(), b"\xef\xbb\xbf" + ROSTER.encode(), ROSTER.encode("gb18030")):
        assert parse_roster(raw) == expected
    with pytest.raises(RosterUnreadable):
        parse_roster(b"village,group,phone,role,name\n\xff\xfe\x80\x81,1,13800000001,leader,\x81\n")


def test_the_worker_path_plans_exactly_what_plan_import_plans() -> None:
    directory = directory_with()
    changed = ROSTER.replace("13800000006,household,陈永福", "13800000006,household,陈永富") + (
        "xishan,1,13700000001,leader,甲\nxishan,1,13900000009,officer,吴警官\n"
    )
    file = read_roster(changed.encode())
    view = DirectoryView.of(directory, file)
    planned = plan_roster(file, view, T0)
    expected = plan_import(directory, parse_roster(changed), T0)
    assert planned == expected
    assert [e for c in planned.changes for e in c.events] == [e for c in expected.changes for e in c.events]
    assert planned.members_renamed == 1 and planned.groups_formed == 1


def test_a_file_full_of_errors_counts_them_all_and_lists_the_first_by_line() -> None:
    # duty rows: a bad group row would also leave its group without a leader and an officer
    bad = "".join(f"v{i},,12345,duty,甲\n" for i in range(MAX_REPORTED_ERRORS + 500))
    with pytest.raises(RosterRejected) as info:
        read_roster(("village,group,phone,role,name\n" + bad).encode())
    assert info.value.total == MAX_REPORTED_ERRORS + 500
    assert [e.line for e in info.value.errors] == list(range(2, MAX_REPORTED_ERRORS + 2))


def test_a_village_has_at_most_a_hundred_duty_desks() -> None:
    desks = "".join(f"v,,0731845{i:05d},duty,值班室{i}\n" for i in range(MAX_DUTY_DESKS + 1))
    errors = errors_of("village,group,phone,role,name\n" + desks)
    assert errors == [(MAX_DUTY_DESKS + 2, f"village v has more than {MAX_DUTY_DESKS} duty desks")]
    ok = "".join(f"v,,0731845{i:05d},duty,值班室{i}\n" for i in range(MAX_DUTY_DESKS))
    assert plan_import(Directory(), parse_roster("village,group,phone,role,name\n" + ok), T0).duty_desks_bound == 100


def test_a_read_file_and_its_plan_are_emptied_for_release_but_keep_their_counts() -> None:
    file = read_roster(ROSTER.encode())
    view = DirectoryView.of(Directory(), file)
    plan = plan_roster(file, view, T0)
    file.release()
    view.release()
    events = plan.event_count
    plan.release()
    assert not file.groups and not any(file.phones) and not file.duty and plan.changes == []
    assert events == 16 and plan.members_bound == 13


# --- every error of every kind at once (issue 24, item 1) -----------------------------------------


def test_a_bad_number_and_an_oversized_group_are_reported_in_one_answer() -> None:
    households = "".join(f"v,big,138000001{i:02d},household,h{i}\n" for i in range(8))
    text = (
        "village,group,phone,role,name\n"
        + households
        + "v,big,12345,household,bad\n"
        + "v,big,13900000001,leader,L\n"
        + "v,big,13900000002,officer,O\n"
    )
    with pytest.raises(RosterRejected) as info:
        read_roster(text.encode())
    errors = [(e.line, e.message) for e in info.value.errors]
    assert errors[0][0] == 10 and "not a valid phone number" in errors[0][1]
    assert (12, "group v/big has 11 numbers; at most 10 are allowed") in errors
    assert info.value.total == 2


def test_the_service_path_reports_the_rows_the_groups_and_the_directory_at_once() -> None:
    directory = directory_with()
    text = (
        "village,group,phone,role,name\n"
        "xishan,1,13800000001,leader,张桂兰\n"  # a household of dongshan/1 in the directory
        "xishan,1,12345,household,甲\n"
        "xishan,1,13900000009,officer,吴警官\n"
        "xishan,1,13700000002,leader,乙\n"
    )
    file = scan_roster(text.encode())
    with pytest.raises(RosterRejected) as info:
        plan_roster(file, DirectoryView.of(directory, file), T0)
    messages = [(e.line, e.message) for e in info.value.errors]
    assert [line for line, _ in messages] == [2, 3, 5], messages
    assert "already a household in group dongshan/1" in messages[0][1]
    assert "not a valid phone number" in messages[1][1]
    assert "already has a leader at line 2" in messages[2][1]


def test_a_refused_row_still_counts_for_its_groups_leader_and_officer() -> None:
    leader_with_bad_number = "village,group,phone,role,name\nv,1,12345,leader,L\nv,1,13700000009,officer,O\n"
    [(line, message)] = errors_of_file(leader_with_bad_number)
    assert line == 2 and "not a valid phone number" in message
    unknown_role = "village,group,phone,role,name\nv,1,13700000001,chief,L\n"
    assert all("no leader" not in m and "no officer" not in m for _, m in errors_of_file(unknown_role))
    household_only = "village,group,phone,role,name\nv,1,12345,household,H\n"
    assert [m.split(";")[0] for _, m in errors_of_file(household_only)][1:] == [
        "group v/1 has no leader",
        "group v/1 has no officer",
    ]


def errors_of_file(text: str) -> list[tuple[int, str]]:
    with pytest.raises(RosterRejected) as info:
        read_roster(text.encode())
    return [(e.line, e.message) for e in info.value.errors]


# --- the console's words, and a full-width comma named (issue 27, item 2) --------------------------

CHINESE = """村,组,电话,角色,姓名
dongshan,1,13800000001,联防户,张桂兰
dongshan,1,13800000008,联防组长,黄志强
dongshan,1,13900000001,警务助理,周丽
dongshan,1,13900000009,社区民警,吴警官
dongshan,,073184512345,值班室,城关派出所值班室
"""


def test_the_chinese_header_and_role_names_read_like_the_english_ones() -> None:
    english = (
        CHINESE.replace("村,组,电话,角色,姓名", "village,group,phone,role,name")
        .replace("联防户", "household")
        .replace("联防组长", "leader")
        .replace("警务助理", "assistant")
        .replace("社区民警", "officer")
        .replace("值班室,城关", "duty,城关")
    )
    assert parse_roster(CHINESE) == parse_roster(english)
    assert [r.role for r in parse_roster(CHINESE)] == ["household", "leader", "assistant", "officer", "duty"]
    assert plan_import(Directory(), parse_roster(CHINESE.encode("gb18030")), T0).members_bound == 4


def test_an_unknown_role_names_the_chinese_words_too() -> None:
    [(line, message)] = parse_errors("村,组,电话,角色,姓名\nv,1,13800000001,村长,甲\n")
    assert line == 2 and "联防户" in message and "household" in message


def test_a_line_of_one_column_with_full_width_commas_is_told_so() -> None:
    [(line, message)] = parse_errors("village,group,phone,role,name\ndongshan，1，13800000001，household，甲\n")
    assert line == 2 and "found 1" in message and "full-width commas (，)" in message
    [(line, message)] = parse_errors("村，组，电话，角色，姓名\ndongshan,1,13800000001,household,甲\n")
    assert line == 1 and "full-width commas (，)" in message
    [(_, plain)] = parse_errors("village,group,phone,role,name\ndongshan 1 13800000001\n")
    assert "full-width" not in plain


def test_the_readmes_roster_example_is_a_valid_roster() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The roster") : readme.index("## Reports")]
    example = section[section.index("```csv\n") + 7 :]
    example = example[: example.index("```")]
    plan = plan_import(Directory(), parse_roster(example), T0)
    assert (plan.groups_formed, plan.members_bound, plan.duty_desks_bound) == (1, 4, 1)
    for role in ("联防户", "联防组长", "警务助理", "社区民警", "值班室", "村,组,电话,角色,姓名"):
        assert role in section


def test_the_difference_finds_moves_and_lists_each_kind_up_to_its_limit() -> None:
    directory = directory_with()
    text = (
        "village,group,phone,role,name\n"
        "dongshan,1,13800000008,leader,黄志强\n"
        "dongshan,1,13900000009,officer,吴警官\n"
        "dongshan,2,13800000001,household,张桂兰\n"  # moved from group 1
        "dongshan,2,13800000018,leader,郑春生\n"
        "dongshan,2,13900000009,officer,吴警官\n"
        "dongshan,2,13800000031,household,新户一\n"
        "dongshan,2,13800000032,household,新户二\n"
    )
    plan = plan_import(directory, parse_roster(text), T0)
    diff = difference(plan, listed=1)
    assert [(m.phone, m.was, m.group) for m in diff.moved] == [("+8613800000001", "dongshan/1", "2")]
    assert diff.counts["moved"] == 1 and diff.counts["bound"] == 2 and len(diff.bound) == 1
    assert "+8613800000001" not in {m.phone for m in diff.unbound}, "a moved member is not also unbound"
    assert diff.counts["unbound"] == plan.members_unbound - 1 == 8  # group 1's six others, the assistant; group 2's one
    assert diff.truncated
    assert difference(plan).truncated is False and len(difference(plan).unbound) == 8
