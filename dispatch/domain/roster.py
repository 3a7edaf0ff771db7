"""Group import: a roster CSV in, every error with its line out, or the exact difference as events.

Columns `village,group,phone,role,name`; role one of household, leader, assistant, officer, duty
(a duty row has an empty group: a station duty desk serving the village).

Invariants of an accepted roster (all checked before any event is produced; an invalid file
yields errors and no events):
- a group has at most 10 numbers, exactly one leader and at least one officer;
- numbers are valid (phonenumbers, default region CN) and stored as E.164;
- a household or leader number belongs to one group only, across the file and the groups
  already in the directory that the file does not mention; officers and assistants may serve
  several groups;
- the file is authoritative for every group it lists, and for the duty desks of every village
  it has duty rows for; groups and villages it does not mention are left alone.
Re-planning the same file against the directory it produced yields no events.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

import msgspec

from dispatch.domain.directory import Directory
from dispatch.domain.phone import InvalidPhone, normalize
from dispatch.events.model import (
    DutyDeskBound,
    DutyDeskUnbound,
    Event,
    GroupFormed,
    MemberBound,
    MemberRenamed,
    MemberUnbound,
    Role,
    RoleAssigned,
)
from dispatch.events.subjects import InvalidToken, check_token, group_id, group_subject, village_subject

HEADER = ("village", "group", "phone", "role", "name")
ROSTER_ROLES: tuple[str, ...] = ("household", "leader", "assistant", "officer", "duty")
EXCLUSIVE_ROLES: tuple[str, ...] = ("household", "leader")
MAX_GROUP_SIZE = 10
MAX_NAME = 64
MAX_ROWS = 2_000_000


class RosterError(msgspec.Struct, frozen=True, kw_only=True):
    line: int
    message: str


@dataclass(frozen=True, slots=True)
class RosterRow:
    line: int
    village: str
    group: str
    phone: str
    role: Role
    name: str


@dataclass(slots=True)
class AggregateChange:
    """Events for one subject, appended only if the subject is still at `expected_seq`."""

    subject: str
    expected_seq: int
    events: list[Event]


@dataclass(slots=True)
class ImportPlan:
    changes: list[AggregateChange] = field(default_factory=list)
    groups_in_file: int = 0
    groups_formed: int = 0
    groups_changed: int = 0
    groups_unchanged: int = 0
    members_bound: int = 0
    members_unbound: int = 0
    roles_assigned: int = 0
    members_renamed: int = 0
    duty_desks_bound: int = 0
    duty_desks_unbound: int = 0

    @property
    def event_count(self) -> int:
        return sum(len(c.events) for c in self.changes)


class RosterRejected(Exception):
    def __init__(self, errors: list[RosterError]) -> None:
        super().__init__(f"{len(errors)} error(s) in roster")
        self.errors = sorted(errors, key=lambda e: e.line)


def parse_roster(text: str, region: str = "CN") -> list[RosterRow]:
    """Parse and validate a roster file on its own; raise RosterRejected with every error."""
    errors: list[RosterError] = []
    rows: list[RosterRow] = []
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header_seen = False
    for line_no, cells in _records(reader, errors):
        if not cells or all(not c.strip() for c in cells):
            continue
        if not header_seen:
            header_seen = True
            if tuple(c.strip().lower() for c in cells) != HEADER:
                errors.append(RosterError(line=line_no, message=f"header must be {','.join(HEADER)}"))
                if len(cells) != len(HEADER):
                    break
            continue
        if len(rows) >= MAX_ROWS:
            errors.append(RosterError(line=line_no, message=f"more than {MAX_ROWS} rows"))
            break
        row = _parse_row(line_no, cells, region, errors)
        if row is not None:
            rows.append(row)
    if not header_seen:
        errors.append(RosterError(line=1, message=f"empty file: expected header {','.join(HEADER)}"))
    if errors:
        raise RosterRejected(errors)
    return rows


def _records(reader: Iterator[list[str]], errors: list[RosterError]) -> Iterator[tuple[int, list[str]]]:
    """Numbered records; a file the csv module cannot read (a NUL byte, a broken quote) is one error."""
    line_no = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors.append(RosterError(line=line_no + 1, message=f"not readable as CSV: {exc}"))
            return
        line_no += 1
        yield line_no, cells


def _parse_row(line: int, cells: list[str], region: str, errors: list[RosterError]) -> RosterRow | None:
    if len(cells) != len(HEADER):
        errors.append(RosterError(line=line, message=f"expected {len(HEADER)} columns, found {len(cells)}"))
        return None
    village, group, raw_phone, role, name = (c.strip() for c in cells)
    ok = True
    try:
        check_token("village", village)
    except InvalidToken as exc:
        errors.append(RosterError(line=line, message=str(exc)))
        ok = False
    role = role.lower()
    if role not in ROSTER_ROLES:
        errors.append(RosterError(line=line, message=f"role {role!r} must be one of {', '.join(ROSTER_ROLES)}"))
        ok = False
    elif role == "duty":
        if group:
            errors.append(RosterError(line=line, message="a duty row must have an empty group"))
            ok = False
    else:
        try:
            check_token("group", group)
        except InvalidToken as exc:
            errors.append(RosterError(line=line, message=str(exc)))
            ok = False
    try:
        phone = normalize(raw_phone, region)
    except InvalidPhone as exc:
        errors.append(RosterError(line=line, message=str(exc)))
        phone = ""
        ok = False
    if len(name) > MAX_NAME:
        errors.append(RosterError(line=line, message=f"name longer than {MAX_NAME} characters"))
        ok = False
    if not ok:
        return None
    return RosterRow(line, village, group, phone, cast(Role, role), name)


def plan_import(directory: Directory, rows: list[RosterRow], at: datetime) -> ImportPlan:
    """Check the roster against itself and the directory; return the difference as events."""
    errors: list[RosterError] = []
    groups: dict[str, list[RosterRow]] = defaultdict(list)
    duty: dict[str, list[RosterRow]] = defaultdict(list)
    for row in rows:
        if row.role == "duty":
            duty[row.village].append(row)
        else:
            groups[group_id(row.village, row.group)].append(row)

    for gid, members in groups.items():
        _check_group(gid, members, errors)
    for village, desks in duty.items():
        seen: dict[str, int] = {}
        for row in desks:
            if row.phone in seen:
                errors.append(
                    RosterError(
                        line=row.line,
                        message=f"duty desk {row.phone} of {village} already listed at line {seen[row.phone]}",
                    )
                )
            seen.setdefault(row.phone, row.line)
    _check_exclusive(directory, groups, errors)
    if errors:
        raise RosterRejected(errors)

    plan = ImportPlan(groups_in_file=len(groups))
    for members in groups.values():
        _diff_group(directory, members, at, plan)
    for village, desks in duty.items():
        _diff_duty(directory, village, desks, at, plan)
    return plan


def _check_group(gid: str, rows: list[RosterRow], errors: list[RosterError]) -> None:
    label = gid.replace(".", "/")
    seen: dict[str, int] = {}
    for row in rows:
        if row.phone in seen:
            errors.append(
                RosterError(
                    line=row.line, message=f"{row.phone} already listed in group {label} at line {seen[row.phone]}"
                )
            )
        seen.setdefault(row.phone, row.line)
    if len(seen) > MAX_GROUP_SIZE:
        errors.append(
            RosterError(
                line=rows[MAX_GROUP_SIZE].line,
                message=f"group {label} has {len(seen)} numbers; at most {MAX_GROUP_SIZE} are allowed",
            )
        )
    leaders = [r for r in rows if r.role == "leader"]
    if not leaders:
        errors.append(RosterError(line=rows[0].line, message=f"group {label} has no leader; exactly one is needed"))
    for extra in leaders[1:]:
        errors.append(
            RosterError(line=extra.line, message=f"group {label} already has a leader at line {leaders[0].line}")
        )
    if not any(r.role == "officer" for r in rows):
        errors.append(
            RosterError(
                line=rows[0].line, message=f"group {label} has no officer; at least one community officer is needed"
            )
        )


def _check_exclusive(directory: Directory, groups: dict[str, list[RosterRow]], errors: list[RosterError]) -> None:
    """A household or leader number may appear in one group only, in any role anywhere else."""
    where: dict[str, list[RosterRow]] = defaultdict(list)
    for rows in groups.values():
        for row in rows:
            where[row.phone].append(row)
    for phone, rows in where.items():
        exclusive = [r for r in rows if r.role in EXCLUSIVE_ROLES]
        in_file = {group_id(r.village, r.group) for r in rows}
        if exclusive and len(in_file) > 1:
            first = exclusive[0]
            for other in rows:
                if group_id(other.village, other.group) != group_id(first.village, first.group):
                    errors.append(
                        RosterError(
                            line=other.line,
                            message=(
                                f"{phone} is a {first.role} in group {first.village}/{first.group} "
                                f"(line {first.line}); "
                                "a household or leader number belongs to one group only"
                            ),
                        )
                    )
        for member in directory.memberships(phone):
            if member.group.id in groups:
                continue
            if exclusive or member.person.role in EXCLUSIVE_ROLES:
                row = exclusive[0] if exclusive else rows[0]
                errors.append(
                    RosterError(
                        line=row.line,
                        message=(
                            f"{phone} is already a {member.person.role} in group "
                            f"{member.group.village}/{member.group.group}; "
                            "a household or leader number belongs to one group only"
                        ),
                    )
                )


def _diff_group(directory: Directory, rows: list[RosterRow], at: datetime, plan: ImportPlan) -> None:
    village, group = rows[0].village, rows[0].group
    current = directory.group(village, group)
    existing = directory.groups.get(group_id(village, group))
    expected = existing.last_seq if existing is not None else 0
    events: list[Event] = []
    wanted = {r.phone: r for r in rows}
    if current is None:
        events.append(GroupFormed(at=at, village=village, group=group))
        plan.groups_formed += 1
        have: dict[str, tuple[str, Role]] = {}
    else:
        have = {p.phone: (p.name, p.role) for p in current.members.values()}
    for phone in have:
        if phone not in wanted:
            events.append(MemberUnbound(at=at, village=village, group=group, phone=phone))
            plan.members_unbound += 1
    for phone, row in wanted.items():
        if phone not in have:
            events.append(MemberBound(at=at, village=village, group=group, phone=phone, name=row.name, role=row.role))
            plan.members_bound += 1
            continue
        name, role = have[phone]
        if role != row.role:
            events.append(RoleAssigned(at=at, village=village, group=group, phone=phone, role=row.role))
            plan.roles_assigned += 1
        if name != row.name:
            events.append(MemberRenamed(at=at, village=village, group=group, phone=phone, name=row.name))
            plan.members_renamed += 1
    if not events:
        plan.groups_unchanged += 1
        return
    if current is not None:
        plan.groups_changed += 1
    plan.changes.append(AggregateChange(group_subject(village, group), expected, events))


def _diff_duty(directory: Directory, village: str, rows: list[RosterRow], at: datetime, plan: ImportPlan) -> None:
    state = directory.villages.get(village)
    have = {p.phone: p.name for p in state.duty_desks.values()} if state else {}
    wanted = {r.phone: r.name for r in rows}
    events: list[Event] = []
    for phone in have:
        if phone not in wanted:
            events.append(DutyDeskUnbound(at=at, village=village, phone=phone))
            plan.duty_desks_unbound += 1
    for phone, name in wanted.items():
        if have.get(phone) != name:
            events.append(DutyDeskBound(at=at, village=village, phone=phone, name=name))
            plan.duty_desks_bound += 1
    if events:
        plan.changes.append(AggregateChange(village_subject(village), state.last_seq if state else 0, events))
