"""Group import: a roster CSV in, every error with its line out, or the exact difference as events.

Columns `village,group,phone,role,name` (or the console's words: `村,组,电话,角色,姓名`); role one of
household, leader, assistant, officer, duty, or 联防户, 联防组长, 警务助理, 社区民警, 值班室 (a duty row has
an empty group: a station duty desk serving the village). Optional columns after them, in any order:
`address` (地址), `lat` (纬度) and `lon` (经度): where a member lives, said in alarms. A file with
them is authoritative for its members' places (an empty cell clears one); a file without them
leaves places alone. Coordinates come both or neither, WGS-84 degrees. And `language` (语言): the
language a member's voice alarms are spoken in, `zh` (普通话, the default) or `yue` (粤语); likewise
authoritative when the column is there (an empty cell: the default), untouched when it is not.

Invariants of an accepted roster (all checked before any event is produced; an invalid file
yields errors and no events):
- a group has at most 10 numbers, exactly one leader and at least one officer; a village has at
  most 100 duty desks (so a village's change always fits in one atomic batch);
- numbers are valid (phonenumbers, default region CN) and stored as E.164;
- a name holds no control, format or line-separator character (so no bidirectional override or
  isolate can turn a screen's text around), except the few that some scripts spell names with;
- a household or leader number belongs to one group only, across the file and the groups
  already in the directory that the file does not mention; officers and assistants may serve
  several groups;
- the file is authoritative for every group it lists, and for the duty desks of every village
  it has duty rows for; groups and villages it does not mention are left alone.
Re-planning the same file against the directory it produced yields no events. `difference(plan)`
shows a plan person by person (bound, unbound, moved between the file's groups, renamed, new
roles, duty desks), each kind counted and its first MAX_LISTED listed.

Every error of every kind is reported at once: a row refused for its number or role still counts
towards its group's size, leader and officer (a refused row of unknown role could be the leader, so
it is not reported missing), so fixing what a rejection lists never reveals a second list.

A roster may be as large as the API accepts (64 MiB, 2M rows), so reading it is built to run in a
worker thread in bounded memory: the bytes are decoded a chunk at a time (never a second copy of
the whole text), rows are grouped as they are read (never a flat list besides), and what the plan
needs from the directory (which is owned by one event loop) is read on that loop a slice at a time
into a `DirectoryView` the plan then runs against. A rejection lists the first
`MAX_REPORTED_ERRORS` errors by line and counts them all.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import heapq
import io
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

import msgspec

from dispatch.domain.directory import Directory
from dispatch.domain.errors import DomainError
from dispatch.domain.phone import InvalidPhone, normalize
from dispatch.events.model import (
    DutyDeskBound,
    DutyDeskUnbound,
    Event,
    GroupFormed,
    MemberBound,
    MemberLanguageSet,
    MemberPlaced,
    MemberRenamed,
    MemberUnbound,
    Place,
    Role,
    RoleAssigned,
)
from dispatch.events.subjects import InvalidToken, check_token, group_id, group_subject, village_subject

HEADER = ("village", "group", "phone", "role", "name")
HEADER_ZH = ("村", "组", "电话", "角色", "姓名")
# the optional columns after the five, by every name a header may give them
PLACE_COLUMNS: dict[str, str] = {
    "address": "address",
    "地址": "address",
    "lat": "lat",
    "latitude": "lat",
    "纬度": "lat",
    "lon": "lon",
    "lng": "lon",
    "longitude": "lon",
    "经度": "lon",
    "language": "language",
    "语言": "language",
}
PLACE_FIELDS = ("address", "lat", "lon")
# A member's language, by every name a cell may give it: the code the events and the voice channel
# carry ("" is Mandarin, the default). Only the languages espeak-ng reads Chinese text in: its `hak`
# (Hakka) and `en` voices exist but say "Chinese letter" for every character, and the alarm has
# no text in any other language.
LANGUAGES: dict[str, str] = {
    "": "",
    "zh": "",
    "cmn": "",
    "zh-cn": "",
    "mandarin": "",
    "普通话": "",
    "国语": "",
    "yue": "yue",
    "cantonese": "yue",
    "粤语": "yue",
    "广东话": "yue",
    "白话": "yue",
}
LANGUAGE_ZH: dict[str, str] = {"": "普通话", "yue": "粤语"}
MAX_ADDRESS = 128
ROSTER_ROLES: tuple[str, ...] = ("household", "leader", "assistant", "officer", "duty")
# The words the console and `groups show` print for each role, accepted in a file too.
ROLES_ZH: dict[str, Role] = {
    "联防户": "household",
    "联防组长": "leader",
    "警务助理": "assistant",
    "社区民警": "officer",
    "值班室": "duty",
    "派出所值班室": "duty",
}
EXCLUSIVE_ROLES: tuple[str, ...] = ("household", "leader")
MAX_GROUP_SIZE = 10
MAX_DUTY_DESKS = 100
MAX_NAME = 64
MAX_ROWS = 2_000_000
MAX_REPORTED_ERRORS = 1000
ENCODINGS: tuple[str, ...] = ("utf-8-sig", "gb18030")
DECODE_CHUNK = 64 * 1024
VIEW_SLICE = 256
PROGRESS_EVERY = 1024
FULL_WIDTH_COMMA = "\uff0c"
PHONE_SHARDS = 64
# Zero-width non-joiner and joiner, and the Mongolian vowel separator: format characters, but part
# of the spelling of Arabic-script (Uyghur), Indic and Mongolian names; none turns text around.
# No other control or format character belongs in a name.
NAME_FORMAT_ALLOWED = frozenset("\u200c\u200d\u180e")
NAME_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})

_ROLES: dict[str, Role] = {**{role: cast(Role, role) for role in ROSTER_ROLES}, **ROLES_ZH}
_members_codec = msgspec.msgpack.Encoder()
_members_decoder = msgspec.msgpack.Decoder(list[tuple[str, str, str]])


class RosterError(msgspec.Struct, frozen=True, kw_only=True):
    """What is wrong with the roster, and on which line (a record's number, counting the header)."""

    line: int
    message: str


class RosterRow(msgspec.Struct, frozen=True, gc=False):
    """One accepted row (untracked by the cyclic GC: 2M of them must not make each full collection,
    which holds the GIL whichever thread runs it, stall the event loop)."""

    line: int
    village: str
    group: str
    phone: str
    role: Role
    name: str
    # whether the file has place columns at all (a file without them leaves places alone), and
    # the row's place when it gives one
    placed: bool = False
    place: Place | None = None
    # likewise for the language column
    languaged: bool = False
    language: str = ""


OpKind = Literal["formed", "bound", "unbound", "role", "renamed", "placed", "language", "desk_bound", "desk_unbound"]


class Op(msgspec.Struct, frozen=True, gc=False):
    """One event of a change, less what its events share (time, village, group)."""

    kind: OpKind
    phone: str = ""
    name: str = ""
    role: Role = "household"
    # what it was, for the difference shown (no event carries it): an unbound member's name and
    # role, a renamed member's or duty desk's old name, a reassigned member's old role, a placed
    # member's old address, a member's old language
    before: str = ""
    place: Place | None = None
    language: str = ""


class AggregateChange(msgspec.Struct, frozen=True, gc=False):
    """Events for one subject, appended only if the subject is still at `expected_seq`.

    Held as ops and built as events when read: 2M events held for a whole import would be ~200 MB
    the cyclic GC walks on every full collection (events are GC types), stalling the loop."""

    subject: str
    expected_seq: int
    at: datetime
    village: str
    group: str
    ops: tuple[Op, ...]

    @property
    def size(self) -> int:
        """How many events the change appends."""
        return len(self.ops)

    @property
    def events(self) -> tuple[Event, ...]:
        """The change's events, in append order (built anew at each read)."""
        return tuple(self._event(op) for op in self.ops)

    def _event(self, op: Op) -> Event:
        at, village, group = self.at, self.village, self.group
        match op.kind:
            case "formed":
                return GroupFormed(at=at, village=village, group=group)
            case "bound":
                return MemberBound(at=at, village=village, group=group, phone=op.phone, name=op.name, role=op.role)
            case "unbound":
                return MemberUnbound(at=at, village=village, group=group, phone=op.phone)
            case "role":
                return RoleAssigned(at=at, village=village, group=group, phone=op.phone, role=op.role)
            case "renamed":
                return MemberRenamed(at=at, village=village, group=group, phone=op.phone, name=op.name)
            case "placed":
                return MemberPlaced(at=at, village=village, group=group, phone=op.phone, place=op.place)
            case "language":
                return MemberLanguageSet(at=at, village=village, group=group, phone=op.phone, language=op.language)
            case "desk_bound":
                return DutyDeskBound(at=at, village=village, phone=op.phone, name=op.name)
            case "desk_unbound":
                return DutyDeskUnbound(at=at, village=village, phone=op.phone)


@dataclass(slots=True)
class ImportPlan:
    """The difference a roster makes: changes in file order (groups, then duty desks) and counts."""

    changes: list[AggregateChange] = field(default_factory=list)
    groups_in_file: int = 0
    groups_formed: int = 0
    groups_changed: int = 0
    groups_unchanged: int = 0
    members_bound: int = 0
    members_unbound: int = 0
    roles_assigned: int = 0
    members_renamed: int = 0
    members_placed: int = 0
    languages_set: int = 0
    duty_desks_bound: int = 0
    duty_desks_unbound: int = 0

    @property
    def event_count(self) -> int:
        """Events over all the changes."""
        return sum(c.size for c in self.changes)

    def release(self) -> None:
        """Drop the changes one at a time (see `RosterFile.release`); the counts stay."""
        while self.changes:
            self.changes.pop()


class RosterRejected(Exception):
    """An invalid roster: `total` errors, the first MAX_REPORTED_ERRORS of them by line in `errors`."""

    def __init__(self, errors: Iterable[RosterError], total: int | None = None) -> None:
        listed = sorted(errors, key=lambda e: e.line)
        self.total = len(listed) if total is None else total
        super().__init__(f"{self.total} error(s) in roster")
        self.errors = listed[:MAX_REPORTED_ERRORS]


class RosterUnreadable(DomainError):
    """The roster's bytes are text in none of the accepted encodings."""


class _Errors:
    """Every error counted; the first MAX_REPORTED_ERRORS by line kept (a file of 2M bad rows
    must not become 2M error objects)."""

    def __init__(self) -> None:
        self.total = 0
        self._kept: list[tuple[int, int, RosterError]] = []

    def append(self, error: RosterError) -> None:
        self.total += 1
        item = (-error.line, -self.total, error)
        if len(self._kept) < MAX_REPORTED_ERRORS:
            heapq.heappush(self._kept, item)
        elif item > self._kept[0]:
            heapq.heapreplace(self._kept, item)

    def __bool__(self) -> bool:
        return self.total > 0

    def rejected(self) -> RosterRejected:
        kept = sorted(self._kept, key=lambda item: (-item[0], -item[1]))
        return RosterRejected([error for _, _, error in kept], self.total)


@dataclass(slots=True)
class RefusedRows:
    """What the refused rows of one group still say (their village and group were readable): how
    many there are, their first lines, and the roles they claim (None: a role not understood).
    Bounded whatever the file: a group needs no more to be checked."""

    count: int = 0
    lines: list[int] = field(default_factory=list)
    leader_lines: list[int] = field(default_factory=list)
    officer: bool = False
    unknown_role: bool = False

    def add(self, line: int, role: Role | None) -> None:
        """Count one refused row of the group."""
        self.count += 1
        if len(self.lines) <= MAX_GROUP_SIZE:
            self.lines.append(line)
        if role is None:
            self.unknown_role = True
        elif role == "leader" and len(self.leader_lines) <= MAX_GROUP_SIZE:
            self.leader_lines.append(line)
        elif role == "officer":
            self.officer = True


@dataclass(slots=True)
class ReadProgress:
    """How far reading a roster has come: written by the reading thread, read by anyone (plain ints)."""

    rows: int = 0
    bytes_read: int = 0


@dataclass(slots=True)
class RosterFile:
    """A roster read whole and grouped: rows by group id and duty rows by village, in file order;
    each number of a group row with its first row (`numbers()`), and every row of the numbers
    listed more than once in `repeated` (few: officers and assistants serving several groups).

    Kept out of the cyclic GC's way (a full collection holds the GIL, so it stalls the event loop
    whichever thread runs it, for ~100 ns a visited item at 2M rows): rows are untracked, and a
    group's rows are a dict by line, which holds no container, so it is untracked too. The numbers
    are spread over PHONE_SHARDS dicts: growing one dict of 2M keys rehashes them all in one C call,
    holding the GIL (docs/benchmarks.md)."""

    groups: defaultdict[str, dict[int, RosterRow]] = field(default_factory=lambda: defaultdict(dict))
    duty: defaultdict[str, list[RosterRow]] = field(default_factory=lambda: defaultdict(list))
    phones: list[dict[str, RosterRow]] = field(default_factory=lambda: [{} for _ in range(PHONE_SHARDS)])
    repeated: dict[str, list[RosterRow]] = field(default_factory=dict)
    rows: int = 0
    digest: str = ""
    errors: _Errors = field(default_factory=lambda: _Errors())
    refused: dict[str, RefusedRows] = field(default_factory=dict)
    checked: bool = False

    def add(self, row: RosterRow) -> None:
        """File one accepted row under its group (or its village's duty desks) and its number."""
        self.rows += 1
        if row.role == "duty":
            self.duty[row.village].append(row)
            return
        self.groups[group_id(row.village, row.group)][row.line] = row
        first = self.phones[hash(row.phone) % PHONE_SHARDS].setdefault(row.phone, row)
        if first is not row:
            self.repeated.setdefault(row.phone, [first]).append(row)

    def phone_row(self, phone: str) -> RosterRow | None:
        """The first group row of a number, or None."""
        return self.phones[hash(phone) % PHONE_SHARDS].get(phone)

    def numbers(self) -> Iterator[tuple[str, RosterRow]]:
        """Every number of a group row, once, with its first row."""
        for shard in self.phones:
            yield from shard.items()

    def release(self) -> None:
        """Empty it an item at a time: dropping 2M rows at once is one C call holding the GIL
        for ~0.1 s, even in a worker thread."""
        _empty(self.groups, self.duty, *self.phones, self.repeated, self.refused)

    @classmethod
    def of(cls, rows: Iterable[RosterRow]) -> RosterFile:
        """Rows already parsed, grouped."""
        file = cls()
        for row in rows:
            file.add(row)
        return file


class KnownGroup(msgspec.Struct, frozen=True, gc=False):
    """A group of the file as the directory has it: its last sequence and, when live, its members
    (packed: (phone, name, role) triples)."""

    last_seq: int
    members: bytes | None
    places: dict[str, Place] | None = None
    languages: dict[str, str] | None = None

    def member_map(self) -> dict[str, tuple[str, Role]]:
        """phone -> (name, role) of its live members; empty when it has none."""
        if self.members is None:
            return {}
        return {phone: (name, cast(Role, role)) for phone, name, role in _members_decoder.decode(self.members)}


@dataclass(frozen=True, slots=True)
class KnownVillage:
    """A duty village of the file as the directory has it: its last sequence and duty desks."""

    last_seq: int
    duty_desks: dict[str, str]


class ElsewhereMember(msgspec.Struct, frozen=True, gc=False):
    """A membership of a file's number in a group the file does not list."""

    village: str
    group: str
    role: Role


@dataclass(slots=True)
class DirectoryView:
    """What planning one roster needs from the directory: the file's groups and duty villages, and
    its numbers' memberships in groups it does not list. Each group is read at one instant (its
    members and sequence agree), so a group changed later is a conflict at append."""

    groups: dict[str, KnownGroup] = field(default_factory=dict)
    villages: dict[str, KnownVillage] = field(default_factory=dict)
    elsewhere: dict[str, list[ElsewhereMember]] = field(default_factory=dict)

    def read(self, directory: Directory, file: RosterFile, step: int = VIEW_SLICE) -> Iterator[None]:
        """Fill the view from `directory`, yielding after every `step` lookups (the caller lets the
        directory's owner run in between)."""
        done = 0
        for gid, rows in file.groups.items():
            first = next(iter(rows.values()))
            village, group = first.village, first.group
            existing = directory.groups.get(gid)
            if existing is not None:
                current = directory.group(village, group)
                members = (
                    None
                    if current is None
                    else _members_codec.encode([(p.phone, p.name, p.role) for p in current.members.values()])
                )
                places = None if current is None or not current.places else dict(current.places)
                languages = None if current is None or not current.languages else dict(current.languages)
                self.groups[gid] = KnownGroup(existing.last_seq, members, places, languages)
            done += 1
            if done % step == 0:
                yield
        for village in file.duty:
            state = directory.villages.get(village)
            if state is not None:
                desks = {p.phone: p.name for p in state.duty_desks.values()}
                self.villages[village] = KnownVillage(state.last_seq, desks)
        for phone, _ in file.numbers():
            if directory.knows(phone):
                outside = [
                    ElsewhereMember(m.group.village, m.group.group, m.person.role)
                    for m in directory.memberships(phone)
                    if m.group.id not in file.groups
                ]
                if outside:
                    self.elsewhere[phone] = outside
            done += 1
            if done % step == 0:
                yield

    def release(self) -> None:
        """Empty it an item at a time (see `RosterFile.release`)."""
        _empty(self.groups, self.villages, self.elsewhere)

    @classmethod
    def of(cls, directory: Directory, file: RosterFile) -> DirectoryView:
        """The whole view at once (for code that owns the directory and has no loop to share)."""
        view = cls()
        for _ in view.read(directory, file):
            pass
        return view


def _empty(*mappings: dict[Any, Any]) -> None:
    for mapping in mappings:
        while mapping:
            mapping.popitem()


def roster_encoding(raw: bytes) -> str:
    """The first of ENCODINGS the whole of `raw` decodes in (a chunk at a time: no call holds the
    GIL for long, no decoded copy is kept); RosterUnreadable when none."""
    view = memoryview(raw)
    for encoding in ENCODINGS:
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            for start in range(0, len(view), DECODE_CHUNK):
                decoder.decode(view[start : start + DECODE_CHUNK])
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            continue
        return encoding
    raise RosterUnreadable("the roster must be UTF-8 (or GB18030) text")


def roster_digest(source: str | bytes) -> str:
    """A short fingerprint of the file's content, for message ids (a retried import reuses them)."""
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        digest.update(source)
    else:
        for start in range(0, len(source), DECODE_CHUNK):
            digest.update(source[start : start + DECODE_CHUNK].encode())
    return digest.hexdigest()[:16]


def _lines(source: str | bytes, progress: ReadProgress | None = None) -> Iterator[str]:
    """The file's lines as `open(newline="")` gives them (`\\n`, `\\r\\n` or `\\r` ends, kept),
    decoded as they are read, leading byte-order marks dropped; `progress.bytes_read` follows the
    bytes decoded so far (a chunk ahead of the lines given)."""
    stream: io.TextIOBase
    raw: io.BytesIO | io.StringIO
    if isinstance(source, bytes):
        raw = io.BytesIO(source)
        stream = io.TextIOWrapper(raw, encoding=roster_encoding(source), newline="")
    else:
        raw = stream = io.StringIO(source, newline="")
    first = True
    for count, line in enumerate(stream):
        if progress is not None and count % PROGRESS_EVERY == 0 and isinstance(raw, io.BytesIO):
            progress.bytes_read = raw.tell()
        if first:
            first = False
            line = line.lstrip("\ufeff")
            if not line:
                continue
        yield line
    if progress is not None and isinstance(source, bytes):
        progress.bytes_read = len(source)


def parse_roster(source: str | bytes, region: str = "CN") -> list[RosterRow]:
    """Parse and validate a roster's rows on their own; raise RosterRejected with every row's error."""
    errors = _Errors()
    rows = [row for row in _rows(source, region, errors) if isinstance(row, RosterRow)]
    if errors:
        raise errors.rejected()
    return rows


def scan_roster(source: str | bytes, region: str = "CN", progress: ReadProgress | None = None) -> RosterFile:
    """Parse and group a roster file (bytes: UTF-8 or GB18030), keeping every row's error in
    `errors` (and what its refused rows still say in `refused`) for `plan_roster` to report with
    the rest; raise RosterUnreadable. Meant for a worker thread."""
    file = RosterFile(digest=roster_digest(source))
    for row in _rows(source, region, file.errors, progress):
        if isinstance(row, RosterRow):
            file.add(row)
        else:
            line, gid, role = row
            refused = file.refused.get(gid)
            if refused is None:
                refused = file.refused[gid] = RefusedRows()
            refused.add(line, role)
    return file


HEADER_PROBE = 64 * 1024  # bytes read to find the first record before an import is queued


def check_header(source: bytes, region: str = "CN") -> None:
    """Raise RosterRejected when the file is empty or its first record is no roster header, and
    RosterUnreadable when it is no text: what an import refuses before it is queued. Reads the first
    non-blank line only; one longer than HEADER_PROBE is left to the import itself."""
    probe = source[:HEADER_PROBE]
    end = 0
    while True:
        newline = probe.find(b"\n", end)
        if newline < 0:
            if len(source) > HEADER_PROBE:
                return
            end = len(source)
            break
        line, end = probe[end:newline], newline + 1
        if line.strip(b" \t\r").removeprefix(b"\xef\xbb\xbf").strip(b" \t\r"):
            break
    file = scan_roster(source[:end], region)
    if file.errors:
        raise file.errors.rejected()


def read_roster(source: str | bytes, region: str = "CN") -> RosterFile:
    """Parse, validate and group a roster file (bytes: UTF-8 or GB18030); raise RosterRejected
    with every error the file shows on its own (rows, groups, duty desks, numbers in several
    groups) or RosterUnreadable. Meant for a worker thread."""
    file = scan_roster(source, region)
    check_file(file)
    if file.errors:
        file.release()
        raise file.errors.rejected()
    return file


Refused = tuple[int, str, Role | None]


def _rows(
    source: str | bytes, region: str, errors: _Errors, progress: ReadProgress | None = None
) -> Iterator[RosterRow | Refused]:
    """Accepted rows, and (line, group id, role or None) for a refused group row whose village and
    group are readable."""
    reader = csv.reader(_lines(source, progress))
    header_seen = False
    count = 0
    interned: dict[str, str] = {}
    extra: tuple[str, ...] = ()
    for line_no, cells in _records(reader, errors):
        if not cells or all(not c.strip() for c in cells):
            continue
        if not header_seen:
            header_seen = True
            header = tuple(c.strip().lower() for c in cells)
            extra = tuple(PLACE_COLUMNS.get(c, "") for c in header[len(HEADER) :])
            if header[: len(HEADER)] not in (HEADER, HEADER_ZH) or "" in extra or len(set(extra)) < len(extra):
                message = (
                    f"header must be {','.join(HEADER)} (or {','.join(HEADER_ZH)}), "
                    "optionally followed by address, lat, lon, language (or 地址, 纬度, 经度, 语言)"
                )
                errors.append(RosterError(line=line_no, message=message + _full_width_hint(cells)))
                if len(cells) < len(HEADER):
                    break
                extra = tuple(c for c in extra if c)
            continue
        if count >= MAX_ROWS:
            errors.append(RosterError(line=line_no, message=f"more than {MAX_ROWS} rows"))
            break
        count += 1
        if progress is not None:
            progress.rows = count
        row = _parse_row(line_no, cells, region, errors, interned, extra)
        if row is not None:
            yield row
    if not header_seen:
        errors.append(RosterError(line=1, message=f"empty file: expected header {','.join(HEADER)}"))


def _full_width_hint(cells: list[str]) -> str:
    """What to say of a line read as one column that holds full-width commas."""
    if len(cells) == 1 and FULL_WIDTH_COMMA in cells[0]:
        return f"; the line separates its columns with full-width commas ({FULL_WIDTH_COMMA}): use ASCII commas (,)"
    return ""


def _records(reader: Iterator[list[str]], errors: _Errors) -> Iterator[tuple[int, list[str]]]:
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


def refused_in_name(name: str) -> str | None:
    """The first character a name may not hold (a control, format or line-separator character),
    described as `U+XXXX NAME`; None when the name is fine."""
    if name.isprintable():
        return None
    for char in name:
        if unicodedata.category(char) in NAME_REFUSED_CATEGORIES and char not in NAME_FORMAT_ALLOWED:
            return f"U+{ord(char):04X} {unicodedata.name(char, 'control character')}"
    return None


def _parse_place(line: int, cells: list[str], extra: tuple[str, ...], errors: _Errors) -> Place | None:
    """The place the optional columns give (None: all empty); errors for a bad one."""
    given = {column: cell.strip() for column, cell in zip(extra, cells, strict=True) if column in PLACE_FIELDS}
    address = given.get("address", "")
    lat_text, lon_text = given.get("lat", ""), given.get("lon", "")
    if len(address) > MAX_ADDRESS:
        errors.append(RosterError(line=line, message=f"address longer than {MAX_ADDRESS} characters"))
    refused = refused_in_name(address)
    if refused is not None:
        errors.append(RosterError(line=line, message=f"address holds {refused}: control characters are not allowed"))
    lat = lon = None
    if bool(lat_text) != bool(lon_text):
        errors.append(RosterError(line=line, message="give both coordinates (lat and lon) or neither"))
    elif lat_text:
        try:
            lat, lon = float(lat_text), float(lon_text)
        except ValueError:
            errors.append(RosterError(line=line, message=f"coordinates {lat_text},{lon_text} are not numbers"))
        else:
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                message = f"coordinates {lat_text},{lon_text} out of range (lat ±90, lon ±180)"
                errors.append(RosterError(line=line, message=message))
                lat = lon = None
    if not address and lat is None:
        return None
    return Place(address=address, lat=lat, lon=lon)


def _parse_language(line: int, cell: str, errors: _Errors) -> str:
    """The language code a cell gives ("" for Mandarin, the default); an error for one not spoken."""
    code = LANGUAGES.get(cell.strip().lower())
    if code is None:
        message = (
            f"language {cell.strip()!r} must be zh (普通话, the default when empty) or yue (粤语): "
            "the alarm is spoken from Chinese text, which no other voice reads"
        )
        errors.append(RosterError(line=line, message=message))
        return ""
    return code


def _parse_row(
    line: int,
    cells: list[str],
    region: str,
    errors: _Errors,
    interned: dict[str, str],
    extra: tuple[str, ...] = (),
) -> RosterRow | Refused | None:
    """The row if it is whole (even with a bad name: it is refused by its error, but its number
    and role still count for its group), else what a refused group row still says, else None."""
    width = len(HEADER) + len(extra)
    if len(cells) != width:
        message = f"expected {width} columns, found {len(cells)}" + _full_width_hint(cells)
        errors.append(RosterError(line=line, message=message))
        return None
    village, group, raw_phone, role_text, name = (c.strip() for c in cells[: len(HEADER)])
    placed = any(column in PLACE_FIELDS for column in extra)
    place = _parse_place(line, cells[len(HEADER) :], extra, errors) if placed else None
    languaged = "language" in extra
    language = _parse_language(line, cells[len(HEADER) + extra.index("language")], errors) if languaged else ""
    place_ok = True
    try:
        check_token("village", village)
    except InvalidToken as exc:
        errors.append(RosterError(line=line, message=str(exc)))
        place_ok = False
    role = _ROLES.get(role_text.lower())
    if role is None:
        errors.append(
            RosterError(
                line=line,
                message=(
                    f"role {role_text.lower()!r} must be one of {', '.join(ROSTER_ROLES)} "
                    f"(or {', '.join(dict.fromkeys(ROLES_ZH))})"
                ),
            )
        )
    elif role == "duty" and group:
        errors.append(RosterError(line=line, message="a duty row must have an empty group"))
        place_ok = False
    if role != "duty":
        try:
            check_token("group", group)
        except InvalidToken as exc:
            errors.append(RosterError(line=line, message=str(exc)))
            place_ok = False
    try:
        phone = normalize(raw_phone, region)
    except InvalidPhone as exc:
        errors.append(RosterError(line=line, message=str(exc)))
        phone = ""
    if len(name) > MAX_NAME:
        errors.append(RosterError(line=line, message=f"name longer than {MAX_NAME} characters"))
    refused = refused_in_name(name)
    if refused is not None:
        errors.append(
            RosterError(
                line=line,
                message=f"name holds {refused}: control, format and text-direction characters are not allowed",
            )
        )
    if not place_ok:
        return None
    if role is None or not phone:
        return None if role == "duty" else (line, group_id(village, group), role)
    return RosterRow(
        line,
        interned.setdefault(village, village),
        interned.setdefault(group, group),
        phone,
        role,
        name,
        placed and role != "duty",
        place if role != "duty" else None,
        languaged and role != "duty",
        language if role != "duty" else "",
    )


def plan_import(directory: Directory, rows: Iterable[RosterRow], at: datetime) -> ImportPlan:
    """Check the roster against itself and the directory; return the difference as events."""
    file = RosterFile.of(rows)
    return plan_roster(file, DirectoryView.of(directory, file), at)


def plan_roster(file: RosterFile, view: DirectoryView, at: datetime) -> ImportPlan:
    """`plan_import` against a view read beforehand: touches no directory, so it may run in a
    worker thread. Raises RosterRejected with every error: the rows' (kept by `scan_roster`), the
    file's own rules, and its numbers against the groups it does not list."""
    errors = file.errors
    if not file.checked:
        check_file(file)
    _check_elsewhere(file, view, errors)
    if errors:
        raise errors.rejected()

    plan = ImportPlan(groups_in_file=len(file.groups))
    for gid, members in file.groups.items():
        _diff_group(view.groups.get(gid), list(members.values()), at, plan)
    for village, desks in file.duty.items():
        _diff_duty(view.villages.get(village), village, desks, at, plan)
    return plan


def check_file(file: RosterFile) -> None:
    """The rules a file can be checked against on its own, into `file.errors`: each group's size,
    leader and officer (counting its refused rows), each village's duty desks, and household and
    leader numbers listed in several groups."""
    errors = file.errors
    for gid, members in file.groups.items():
        _check_group(gid, list(members.values()), errors, file.refused.get(gid))
    for gid, refused in file.refused.items():
        if gid not in file.groups:
            _check_group(gid, [], errors, refused)
    for village, desks in file.duty.items():
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
            if len(seen) == MAX_DUTY_DESKS + 1 and seen[row.phone] == row.line:
                errors.append(
                    RosterError(line=row.line, message=f"village {village} has more than {MAX_DUTY_DESKS} duty desks")
                )
    _check_exclusive(file, errors)
    file.checked = True


def _check_group(gid: str, rows: list[RosterRow], errors: _Errors, refused: RefusedRows | None = None) -> None:
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
    refused = refused or RefusedRows()
    lines = sorted([r.line for r in rows] + refused.lines)
    size = len(seen) + refused.count
    if size > MAX_GROUP_SIZE:
        errors.append(
            RosterError(
                line=lines[MAX_GROUP_SIZE],
                message=f"group {label} has {size} numbers; at most {MAX_GROUP_SIZE} are allowed",
            )
        )
    leaders = sorted([r.line for r in rows if r.role == "leader"] + refused.leader_lines)
    if not leaders and not refused.unknown_role:
        errors.append(RosterError(line=lines[0], message=f"group {label} has no leader; exactly one is needed"))
    for extra in leaders[1:]:
        errors.append(RosterError(line=extra, message=f"group {label} already has a leader at line {leaders[0]}"))
    if not refused.officer and not refused.unknown_role and not any(r.role == "officer" for r in rows):
        errors.append(
            RosterError(
                line=lines[0], message=f"group {label} has no officer; at least one community officer is needed"
            )
        )


def _check_exclusive(file: RosterFile, errors: _Errors) -> None:
    """A household or leader number may appear in one group of the file only."""
    for phone, rows in file.repeated.items():
        exclusive = [r for r in rows if r.role in EXCLUSIVE_ROLES]
        if exclusive and len({group_id(r.village, r.group) for r in rows}) > 1:
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


def _check_elsewhere(file: RosterFile, view: DirectoryView, errors: _Errors) -> None:
    """A household or leader number of the file may be in no group of the directory the file does
    not list, and no number of the file may be a household or leader in one."""
    for phone, members in view.elsewhere.items():
        first = file.phone_row(phone)
        if first is None:
            continue
        rows = file.repeated.get(phone) or [first]
        exclusive = [r for r in rows if r.role in EXCLUSIVE_ROLES]
        for member in members:
            if exclusive or member.role in EXCLUSIVE_ROLES:
                row = exclusive[0] if exclusive else rows[0]
                errors.append(
                    RosterError(
                        line=row.line,
                        message=(
                            f"{phone} is already a {member.role} in group "
                            f"{member.village}/{member.group}; "
                            "a household or leader number belongs to one group only"
                        ),
                    )
                )


def _diff_group(known: KnownGroup | None, rows: list[RosterRow], at: datetime, plan: ImportPlan) -> None:
    village, group = rows[0].village, rows[0].group
    expected = known.last_seq if known is not None else 0
    ops: list[Op] = []
    wanted = {r.phone: r for r in rows}
    if known is None or known.members is None:
        ops.append(Op("formed"))
        plan.groups_formed += 1
        have: dict[str, tuple[str, Role]] = {}
    else:
        have = known.member_map()
    for phone, (old_name, old_role) in have.items():
        if phone not in wanted:
            ops.append(Op("unbound", phone, old_name, old_role))
            plan.members_unbound += 1
    for phone, row in wanted.items():
        if phone not in have:
            ops.append(Op("bound", phone, row.name, row.role))
            plan.members_bound += 1
            continue
        name, role = have[phone]
        if role != row.role:
            ops.append(Op("role", phone, row.name, row.role, role))
            plan.roles_assigned += 1
        if name != row.name:
            ops.append(Op("renamed", phone, row.name, row.role, name))
            plan.members_renamed += 1
    if any(row.placed for row in rows):
        places = (known.places if known is not None else None) or {}
        for phone, row in wanted.items():
            old_place = places.get(phone) if phone in have else None
            if row.place != old_place:
                before = old_place.address if old_place is not None else ""
                ops.append(Op("placed", phone, row.name, row.role, before, row.place))
                plan.members_placed += 1
    if any(row.languaged for row in rows):
        languages = (known.languages if known is not None else None) or {}
        for phone, row in wanted.items():
            old_language = languages.get(phone, "") if phone in have else ""
            if row.language != old_language:
                ops.append(Op("language", phone, row.name, row.role, old_language, language=row.language))
                plan.languages_set += 1
    if not ops:
        plan.groups_unchanged += 1
        return
    if known is not None and known.members is not None:
        plan.groups_changed += 1
    plan.changes.append(AggregateChange(group_subject(village, group), expected, at, village, group, tuple(ops)))


def _diff_duty(known: KnownVillage | None, village: str, rows: list[RosterRow], at: datetime, plan: ImportPlan) -> None:
    have = known.duty_desks if known is not None else {}
    wanted = {r.phone: r.name for r in rows}
    ops: list[Op] = []
    for phone, old_name in have.items():
        if phone not in wanted:
            ops.append(Op("desk_unbound", phone, old_name, "duty"))
            plan.duty_desks_unbound += 1
    for phone, name in wanted.items():
        if have.get(phone) != name:
            ops.append(Op("desk_bound", phone, name, "duty", have.get(phone, "")))
            plan.duty_desks_bound += 1
    if ops:
        expected = known.last_seq if known else 0
        plan.changes.append(AggregateChange(village_subject(village), expected, at, village, "", tuple(ops)))


MAX_LISTED = 1000


class MemberChange(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One number's change as the difference lists it; `was` is what it was (the old name of a
    renamed number, the old role of a reassigned one, the group a moved member leaves)."""

    village: str
    group: str = ""
    phone: str
    name: str = ""
    role: str = ""
    was: str = ""
    address: str = ""
    lat: float | None = None
    lon: float | None = None
    language: str = ""


class Difference(msgspec.Struct, kw_only=True):
    """What an import changes, person by person (each list its first MAX_LISTED; `truncated` says
    when one holds fewer than it counts). A member unbound from one group of the file and bound in
    another is `moved`, in neither `bound` nor `unbound`."""

    formed: list[str] = msgspec.field(default_factory=list)
    bound: list[MemberChange] = msgspec.field(default_factory=list)
    unbound: list[MemberChange] = msgspec.field(default_factory=list)
    moved: list[MemberChange] = msgspec.field(default_factory=list)
    renamed: list[MemberChange] = msgspec.field(default_factory=list)
    roles: list[MemberChange] = msgspec.field(default_factory=list)
    placed: list[MemberChange] = msgspec.field(default_factory=list)
    languages: list[MemberChange] = msgspec.field(default_factory=list)
    duty_desks_bound: list[MemberChange] = msgspec.field(default_factory=list)
    duty_desks_unbound: list[MemberChange] = msgspec.field(default_factory=list)
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    truncated: bool = False


def difference(plan: ImportPlan, listed: int = MAX_LISTED) -> Difference:
    """The plan's changes person by person, moves found (a number unbound from one group and bound
    in another), each kind counted and its first `listed` kept."""
    unbound: dict[str, list[tuple[str, str, Op]]] = {}
    for change in plan.changes:
        for op in change.ops:
            if op.kind == "unbound":
                unbound.setdefault(op.phone, []).append((change.village, change.group, op))
    counts: dict[str, int] = defaultdict(int)
    diff = Difference()

    def keep(kind: str, item: MemberChange | str) -> None:
        counts[kind] += 1
        items: list[MemberChange | str] = getattr(diff, kind)
        if len(items) < listed:
            items.append(item)
        else:
            diff.truncated = True

    def member(op: Op, village: str, group: str = "", role: str = "", **more: Any) -> MemberChange:
        return MemberChange(village=village, group=group, phone=op.phone, name=op.name, role=role or op.role, **more)

    for change in plan.changes:
        village, group = change.village, change.group
        for op in change.ops:
            if op.kind == "formed":
                keep("formed", f"{village}/{group}")
            elif op.kind == "bound":
                left = next((u for u in unbound.get(op.phone, ()) if (u[0], u[1]) != (village, group)), None)
                if left is None:
                    keep("bound", member(op, village, group))
                else:
                    unbound[op.phone].remove(left)
                    keep("moved", member(op, village, group, was=f"{left[0]}/{left[1]}"))
            elif op.kind in ("role", "renamed"):
                keep("roles" if op.kind == "role" else "renamed", member(op, village, group, was=op.before))
            elif op.kind == "placed":
                where = op.place or Place()
                keep(
                    "placed",
                    member(op, village, group, was=op.before, address=where.address, lat=where.lat, lon=where.lon),
                )
            elif op.kind == "language":
                keep("languages", member(op, village, group, was=op.before, language=op.language))
            elif op.kind == "desk_bound" and op.before:
                keep("renamed", member(op, village, role="duty", was=op.before))
            elif op.kind == "desk_bound":
                keep("duty_desks_bound", member(op, village, role="duty"))
            elif op.kind == "desk_unbound":
                keep("duty_desks_unbound", member(op, village, role="duty"))
    for phone, places in unbound.items():
        for village, group, op in places:
            keep("unbound", MemberChange(village=village, group=group, phone=phone, name=op.name, role=op.role))
    diff.counts = {
        kind: counts[kind]
        for kind in (
            "formed",
            "bound",
            "unbound",
            "moved",
            "renamed",
            "roles",
            "placed",
            "languages",
            "duty_desks_bound",
            "duty_desks_unbound",
        )
    }
    return diff
