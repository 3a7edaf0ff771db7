"""The directory: who is in which group, and which duty desks serve which village.

A fold of Group and Village events, kept in memory by every process (ingress reads it on the
hot path). Invariants:
- `apply` is deterministic and idempotent per stream sequence: an event at or below the
  sequence already applied for its aggregate is ignored;
- each group and village remembers the stream sequence of its last event, which is the
  expected-last-subject-sequence for the next change (optimistic concurrency on import);
- `memberships(phone)` lists live groups only, in a stable order (village, group); so does
  `page_groups`, a page at a time, touching only the groups it returns;
- it stays small at province scale (1M numbers): `compact()` packs every group's members into one
  msgpack blob and the phone index into two sorted arrays (12 bytes a membership); groups changed
  since are held unpacked and phones changed since in a small overlay, which is authoritative for
  them. Compacting changes no answer, only memory.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from typing import get_args

import msgspec

from dispatch.domain.absence import Absence, evolve_member
from dispatch.domain.errors import InvalidCommand, NotFound, Stale
from dispatch.domain.phone import cn_mobile_candidate, try_normalize
from dispatch.domain.timezones import valid_time_zone
from dispatch.events.model import (
    DEFAULT_NEIGHBOURS_ORDER,
    NEIGHBOURS_ORDERS,
    Actor,
    DutyDeskBound,
    DutyDeskUnbound,
    Event,
    GroupDissolved,
    GroupEvent,
    GroupFormed,
    MemberBound,
    MemberEvent,
    MemberLanguageSet,
    MemberPlaced,
    MemberRenamed,
    MemberUnbound,
    NeighboursOrder,
    Person,
    Place,
    Role,
    RoleAssigned,
    VillageEvent,
    VillageSettingsChanged,
)
from dispatch.events.subjects import InvalidToken, check_token, group_id

_ROLES: tuple[Role, ...] = get_args(Role)
_ROLE_CODE = {role: code for code, role in enumerate(_ROLES)}
OVERLAY_MAX = 50_000
UNPACKED_MAX = 1_000
SNAPSHOT_VERSION = 1
_pack = msgspec.msgpack.Encoder()
_unpack = msgspec.msgpack.Decoder(list[tuple[str, str, int]])


class GroupState:
    """One group: its members (unpacked while it changes, one packed blob once compacted)."""

    __slots__ = ("_members", "_packed", "dissolved", "group", "languages", "last_seq", "places", "slot", "village")

    def __init__(self, village: str, group: str, slot: int = -1) -> None:
        self.village = village
        self.group = group
        self.slot = slot
        self.last_seq = 0
        self.dissolved = False
        self._members: dict[str, Person] | None = {}
        self._packed = b""
        # phone -> place, for the members the roster places (None while none is): kept apart from
        # the packed members, so a roster without places packs and snapshots as before
        self.places: dict[str, Place] | None = None
        # phone -> language, for the members the roster gives one other than the default (likewise)
        self.languages: dict[str, str] | None = None

    @property
    def id(self) -> str:
        """The group's id: `<village>.<group>`."""
        return group_id(self.village, self.group)

    @property
    def members(self) -> dict[str, Person]:
        """phone -> member, in binding order; a fresh dict when packed (changes go through `edit`)."""
        if self._members is not None:
            return self._members
        places, languages = self.places, self.languages
        if places or languages:
            places, languages = places or {}, languages or {}
            return {
                phone: Person(
                    phone=phone,
                    name=name,
                    role=_ROLES[role],
                    place=places.get(phone),
                    language=languages.get(phone, ""),
                )
                for phone, name, role in _unpack.decode(self._packed)
            }
        return {
            phone: Person(phone=phone, name=name, role=_ROLES[role])
            for phone, name, role in _unpack.decode(self._packed)
        }

    def place_member(self, phone: str, place: Place | None) -> None:
        """Set (or clear, None) a member's place."""
        members = self.edit()
        old = members.get(phone)
        if old is None:
            return
        members[phone] = msgspec.structs.replace(old, place=place)
        if place is None:
            if self.places is not None:
                self.places.pop(phone, None)
                if not self.places:
                    self.places = None
        else:
            if self.places is None:
                self.places = {}
            self.places[phone] = place

    def set_language(self, phone: str, language: str) -> None:
        """Set (or clear, "") the language a member's voice alarms are spoken in."""
        members = self.edit()
        old = members.get(phone)
        if old is None:
            return
        members[phone] = msgspec.structs.replace(old, language=language)
        if not language:
            if self.languages is not None:
                self.languages.pop(phone, None)
                self.languages = self.languages or None
        else:
            if self.languages is None:
                self.languages = {}
            self.languages[phone] = language

    def edit(self) -> dict[str, Person]:
        """The members unpacked for changing (call `pack` when done)."""
        if self._members is None:
            self._members = self.members
            self._packed = b""
        return self._members

    def pack(self) -> None:
        """Pack the members back into bytes after an edit."""
        if self._members is not None:
            self._packed = _pack.encode([(p.phone, p.name, _ROLE_CODE[p.role]) for p in self._members.values()])
            self._members = None

    def leader(self) -> Person | None:
        """The group's leader, if it has one."""
        return next((m for m in self.members.values() if m.role == "leader"), None)


def phone_key(phone: str) -> int | str:
    """E.164 numbers as integers (compact, sortable); anything else as itself."""
    digits = phone[1:]
    if phone.startswith("+") and digits.isdigit() and len(digits) <= 18:
        return int(digits)
    return phone


class PhoneIndex:
    """phone -> group slots: sorted parallel arrays for the bulk, an overlay for what changed since.

    Invariant: a phone in the overlay has exactly the slots the overlay says (maybe none); any
    other phone has the slots of its run in the arrays."""

    def __init__(self) -> None:
        self._keys = array("q")
        self._slots = array("q")
        self._recent: dict[int | str, tuple[int, ...]] = {}
        self._numbers = 0

    def get(self, phone: str) -> tuple[int, ...]:
        """The group slots a number is bound in."""
        key = phone_key(phone)
        recent = self._recent.get(key)
        if recent is not None:
            return recent
        if not isinstance(key, int):
            return ()
        keys = self._keys
        i = bisect_left(keys, key)
        found: list[int] = []
        while i < len(keys) and keys[i] == key:
            found.append(self._slots[i])
            i += 1
        return tuple(found)

    def add(self, phone: str, slot: int) -> None:
        """Bind a number to a group slot."""
        current = self.get(phone)
        if slot not in current:
            self._set(phone, (*current, slot), current)

    def remove(self, phone: str, slot: int) -> None:
        """Unbind a number from a group slot."""
        current = self.get(phone)
        if slot in current:
            self._set(phone, tuple(s for s in current if s != slot), current)

    def _set(self, phone: str, slots: tuple[int, ...], before: tuple[int, ...]) -> None:
        self._recent[phone_key(phone)] = slots
        self._numbers += bool(slots) - bool(before)
        if len(self._recent) >= OVERLAY_MAX:
            self.compact()

    def compact(self) -> None:
        """Fold the overlay into the arrays (numeric keys; others stay in the overlay).

        A merge: the overlay's keys are looked up in the sorted arrays and the runs between them
        copied whole, so it costs O(overlay x log n) in Python plus an O(n) copy in C."""
        numeric = sorted((k, v) for k, v in self._recent.items() if isinstance(k, int))
        if not numeric:
            return
        old_keys, old_slots = self._keys, self._slots
        keys, slots = array("q"), array("q")
        i, n = 0, len(old_keys)
        for key, new in numeric:
            j = bisect_left(old_keys, key, i)
            keys.extend(old_keys[i:j])
            slots.extend(old_slots[i:j])
            while j < n and old_keys[j] == key:
                j += 1
            for slot in sorted(new):
                keys.append(key)
                slots.append(slot)
            i = j
        keys.extend(old_keys[i:])
        slots.extend(old_slots[i:])
        self._keys, self._slots = keys, slots
        self._recent = {k: v for k, v in self._recent.items() if not isinstance(k, int)}

    def __len__(self) -> int:
        """How many numbers belong to at least one group."""
        return self._numbers


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds from raise to tier 1 (ack), from raise to tier 2 (escalate), from cover to arrival."""

    ack_s: float = 60.0
    escalate_s: float = 300.0
    arrival_s: float = 1200.0


@dataclass(slots=True)
class VillageState:
    """A village's own settings: deadline overrides, time zone and duty desks."""

    village: str
    duty_desks: dict[str, Person] = field(default_factory=dict)
    last_seq: int = 0
    ack_deadline_s: float | None = None
    escalate_after_s: float | None = None
    arrival_deadline_s: float | None = None
    time_zone: str | None = None
    proxy_counts: bool | None = None
    neighbours_order: NeighboursOrder | None = None
    neighbour_covers: bool | None = None
    neighbours: dict[str, tuple[str, ...]] | None = None

    def deadlines(self, defaults: Deadlines) -> Deadlines:
        """The village's deadlines, its overrides over `defaults`."""
        return Deadlines(
            ack_s=self.ack_deadline_s if self.ack_deadline_s is not None else defaults.ack_s,
            escalate_s=self.escalate_after_s if self.escalate_after_s is not None else defaults.escalate_s,
            arrival_s=self.arrival_deadline_s if self.arrival_deadline_s is not None else defaults.arrival_s,
        )


@dataclass(slots=True, frozen=True)
class Membership:
    """One group a number belongs to, as that member."""

    group: GroupState
    person: Person
    members: dict[str, Person]


class _GroupRow(msgspec.Struct, array_like=True):
    village: str
    group: str
    last_seq: int
    dissolved: bool
    members: bytes
    places: list[tuple[str, Place]] = []
    languages: list[tuple[str, str]] = []


class _VillageRow(msgspec.Struct, array_like=True):
    village: str
    last_seq: int
    duty_desks: list[tuple[str, str]]
    ack_deadline_s: float | None
    escalate_after_s: float | None
    arrival_deadline_s: float | None
    time_zone: str | None = None
    proxy_counts: bool | None = None
    neighbours_order: NeighboursOrder | None = None
    neighbour_covers: bool | None = None
    neighbours: dict[str, tuple[str, ...]] | None = None


class _AbsenceRow(msgspec.Struct, array_like=True):
    phone: str
    last_seq: int
    starts: datetime | None = None
    until: datetime | None = None
    substitute: str | None = None
    substitute_name: str = ""
    note: str = ""
    set_at: datetime | None = None
    actor: Actor | None = None


class Snapshot(msgspec.Struct, array_like=True):
    """The directory as of `positions` (stream sequence applied, per followed subject filter)."""

    version: int
    stream_created: str
    positions: dict[str, int]
    groups: list[_GroupRow]
    villages: list[_VillageRow]
    phone_keys: bytes
    phone_slots: bytes
    phones_other: list[tuple[str, list[int]]]
    numbers: int
    absences: list[_AbsenceRow] = []


_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """A directory snapshot as bytes (msgpack)."""
    return _pack.encode(snapshot)


DEFAULT_NEIGHBOUR_GROUPS = 4
"""A village that names no neighbours: each group's nearest groups in the village's numbering, at
most this many, so an alarm in a village of hundreds of groups rings a few leaders, not all."""


def group_order(group: str) -> tuple[int, int, str]:
    """A group's place in its village's numbering: 2 before 10; names that are not numbers after
    them, by name."""
    return (0, int(group), group) if group.isdigit() else (1, 0, group)


def _village_range(keys: list[tuple[str, str]], village: str) -> tuple[int, int]:
    """Where a village's groups lie in the sorted (village, group) keys: "\x00" appended is the
    smallest name after the village's own."""
    return bisect_left(keys, (village,)), bisect_left(keys, (village + "\x00",))


class Directory:
    """Mutable fold of the directory events; not thread-safe (one event loop owns it)."""

    def __init__(self) -> None:
        self.groups: dict[str, GroupState] = {}
        self.villages: dict[str, VillageState] = {}
        self._slots: list[GroupState] = []
        self._unpacked: dict[int, GroupState] = {}
        self._by_phone = PhoneIndex()
        self._live = 0
        self._order: tuple[list[tuple[str, str]], list[GroupState]] | None = None
        self._names: list[str] | None = None
        # village -> its groups (dissolved too) in their numbering, and each one's place there
        self._numbering: dict[str, tuple[list[GroupState], dict[str, int]]] = {}
        self.position = 0
        # phone -> its absence (set and not ended; maybe over or not yet begun), and phone -> the
        # sequence of its member subject's last event
        self.absences: dict[str, Absence] = {}
        self.member_seqs: dict[str, int] = {}

    def apply(self, event: Event, seq: int) -> None:
        """Fold one group, village or member event stored at `seq`."""
        if isinstance(event, GroupEvent):
            self._apply_group(event, seq)
        elif isinstance(event, VillageEvent):
            self._apply_village(event, seq)
        elif isinstance(event, MemberEvent):
            self._apply_member(event, seq)
        self.position = max(self.position, seq)

    def _apply_member(self, event: MemberEvent, seq: int) -> None:
        if seq <= self.member_seqs.get(event.phone, 0):
            return
        self.member_seqs[event.phone] = seq
        absence = evolve_member(self.absences.get(event.phone), event)
        if absence is None:
            self.absences.pop(event.phone, None)
        else:
            self.absences[event.phone] = absence

    def absent(self, phone: str, now: datetime) -> Absence | None:
        """The number's absence when it is away at `now`, else None."""
        absence = self.absences.get(phone)
        return absence if absence is not None and absence.absent_at(now) else None

    def _apply_group(self, event: GroupEvent, seq: int) -> None:
        gid = group_id(event.village, event.group)
        state = self.groups.get(gid)
        if state is not None and seq <= state.last_seq:
            return
        if state is None:
            state = self.groups[gid] = GroupState(event.village, event.group, len(self._slots))
            self._slots.append(state)
            self._live += 1
            self._order = self._names = None
            self._numbering.pop(event.village, None)
        state.last_seq = seq
        if state.slot not in self._unpacked:
            if len(self._unpacked) >= UNPACKED_MAX:
                self._pack_groups()
            self._unpacked[state.slot] = state
        if isinstance(event, GroupFormed):
            if state.dissolved:
                self._names = None
            self._live += state.dissolved
            state.dissolved = False
        elif isinstance(event, MemberBound):
            state.edit()[event.phone] = Person(phone=event.phone, name=event.name, role=event.role)
            if state.places is not None:
                state.place_member(event.phone, None)
            if state.languages is not None:
                state.set_language(event.phone, "")
            self._by_phone.add(event.phone, state.slot)
        elif isinstance(event, MemberUnbound):
            state.edit().pop(event.phone, None)
            if state.places is not None:
                state.places.pop(event.phone, None)
                state.places = state.places or None
            if state.languages is not None:
                state.languages.pop(event.phone, None)
                state.languages = state.languages or None
            self._by_phone.remove(event.phone, state.slot)
        elif isinstance(event, RoleAssigned):
            members = state.edit()
            old = members.get(event.phone)
            if old is not None:
                members[event.phone] = msgspec.structs.replace(old, role=event.role)
        elif isinstance(event, MemberRenamed):
            members = state.edit()
            old = members.get(event.phone)
            if old is not None:
                members[event.phone] = msgspec.structs.replace(old, name=event.name)
        elif isinstance(event, MemberPlaced):
            state.place_member(event.phone, event.place)
        elif isinstance(event, MemberLanguageSet):
            state.set_language(event.phone, event.language)
        elif isinstance(event, GroupDissolved):
            members = state.edit()
            for phone in members:
                self._by_phone.remove(phone, state.slot)
            members.clear()
            state.places = state.languages = None
            self._live -= not state.dissolved
            state.dissolved = True
            self._names = None

    def _apply_village(self, event: VillageEvent, seq: int) -> None:
        state = self.villages.get(event.village)
        if state is not None and seq <= state.last_seq:
            return
        if state is None:
            state = self.villages[event.village] = VillageState(event.village)
            self._names = None
        state.last_seq = seq
        if isinstance(event, DutyDeskBound):
            state.duty_desks[event.phone] = Person(phone=event.phone, name=event.name, role="duty")
        elif isinstance(event, DutyDeskUnbound):
            state.duty_desks.pop(event.phone, None)
        elif isinstance(event, VillageSettingsChanged):
            state.ack_deadline_s = event.ack_deadline_s
            state.escalate_after_s = event.escalate_after_s
            state.arrival_deadline_s = event.arrival_deadline_s
            state.time_zone = event.time_zone
            state.proxy_counts = event.proxy_counts
            state.neighbours_order = event.neighbours_order
            state.neighbour_covers = event.neighbour_covers
            state.neighbours = event.neighbours

    def compact(self) -> None:
        """Pack what changed since the last compaction; answers stay the same."""
        self._pack_groups()
        self._by_phone.compact()

    def snapshot(self, stream_created: str, positions: dict[str, int]) -> Snapshot:
        """The whole directory as it is now (compacted first), tagged with what it was folded from.

        It shares nothing mutable with the directory, so `encode_snapshot` may run in another thread."""
        self.compact()
        for group in self._slots:
            group.pack()
        index = self._by_phone
        return Snapshot(
            version=SNAPSHOT_VERSION,
            stream_created=stream_created,
            positions=positions,
            groups=[
                _GroupRow(
                    g.village,
                    g.group,
                    g.last_seq,
                    g.dissolved,
                    g._packed,
                    list((g.places or {}).items()),
                    list((g.languages or {}).items()),
                )
                for g in self._slots
            ],
            villages=[
                _VillageRow(
                    v.village,
                    v.last_seq,
                    [(p.phone, p.name) for p in v.duty_desks.values()],
                    v.ack_deadline_s,
                    v.escalate_after_s,
                    v.arrival_deadline_s,
                    v.time_zone,
                    v.proxy_counts,
                    v.neighbours_order,
                    v.neighbour_covers,
                    v.neighbours,
                )
                for v in self.villages.values()
            ],
            phone_keys=index._keys.tobytes(),
            phone_slots=index._slots.tobytes(),
            phones_other=[(str(k), list(v)) for k, v in index._recent.items()],
            numbers=index._numbers,
            absences=[
                _AbsenceRow(
                    phone,
                    seq,
                    *(
                        (a.starts, a.until, a.substitute, a.substitute_name, a.note, a.set_at, a.actor)
                        if (a := self.absences.get(phone)) is not None
                        else ()
                    ),
                )
                for phone, seq in self.member_seqs.items()
            ],
        )

    @classmethod
    def restore(cls, data: bytes) -> tuple[Directory, Snapshot]:
        """A directory from `snapshot()` bytes; raises msgspec.DecodeError/ValueError when unusable."""
        snap = _snapshot_decoder.decode(data)
        if snap.version != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {snap.version}, expected {SNAPSHOT_VERSION}")
        d = cls()
        for slot, row in enumerate(snap.groups):
            state = GroupState(row.village, row.group, slot)
            state.last_seq, state.dissolved = row.last_seq, row.dissolved
            state._members, state._packed = None, row.members
            state.places = dict(row.places) or None
            state.languages = dict(row.languages) or None
            d._slots.append(state)
            d.groups[state.id] = state
            d._live += not row.dissolved
        for vrow in snap.villages:
            village = VillageState(
                vrow.village,
                {phone: Person(phone=phone, name=name, role="duty") for phone, name in vrow.duty_desks},
                vrow.last_seq,
                vrow.ack_deadline_s,
                vrow.escalate_after_s,
                vrow.arrival_deadline_s,
                vrow.time_zone,
                vrow.proxy_counts,
                vrow.neighbours_order,
                vrow.neighbour_covers,
                vrow.neighbours,
            )
            d.villages[vrow.village] = village
        index = d._by_phone
        index._keys.frombytes(snap.phone_keys)
        index._slots.frombytes(snap.phone_slots)
        if len(index._keys) != len(index._slots):
            raise ValueError("snapshot phone index is torn")
        index._recent = {k: tuple(v) for k, v in snap.phones_other}
        index._numbers = snap.numbers
        for arow in snap.absences:
            d.member_seqs[arow.phone] = arow.last_seq
            if arow.starts is not None and arow.until is not None:
                d.absences[arow.phone] = Absence(
                    arow.phone,
                    arow.starts,
                    arow.until,
                    arow.substitute,
                    arow.substitute_name,
                    arow.note,
                    arow.set_at,
                    arow.actor,
                )
        d.position = max(snap.positions.values(), default=0)
        return d, snap

    def _pack_groups(self) -> None:
        for group in self._unpacked.values():
            group.pack()
        self._unpacked.clear()

    def knows(self, phone: str) -> bool:
        """Whether the number is bound in at least one group."""
        return bool(self._by_phone.get(phone))

    def caller_e164(self, raw: str, region: str) -> str | None:
        """A caller's number as E.164 (None: not a number); a Chinese mobile already bound here
        skips the full parse (the alarm path's common case)."""
        if region == "CN":
            candidate = cn_mobile_candidate(raw)
            if candidate is not None and self.knows(candidate):
                return candidate
        return try_normalize(raw, region)

    def memberships(self, phone: str) -> list[Membership]:
        """Every group the number is bound in."""
        slots = self._by_phone.get(phone)
        if not slots:
            return []
        found = []
        for group in sorted((self._slots[s] for s in slots), key=lambda g: g.id):
            members = group.members
            person = members.get(phone)
            if person is not None and not group.dissolved:
                found.append(Membership(group, person, members))
        return found

    def group(self, village: str, group: str) -> GroupState | None:
        """A group by village and name, or None."""
        state = self.groups.get(group_id(village, group))
        return None if state is None or state.dissolved else state

    def deadlines(self, village: str | None, defaults: Deadlines) -> Deadlines:
        """The deadlines of incidents raised in `village`."""
        state = self.villages.get(village) if village else None
        return state.deadlines(defaults) if state else defaults

    def proxy_counts(self, village: str | None) -> bool:
        """Whether a proxy answer counts toward cover in `village` (the default: it does)."""
        state = self.villages.get(village) if village else None
        return state is None or state.proxy_counts is not False

    def neighbours_order(self, village: str | None) -> NeighboursOrder:
        """When a village's neighbouring groups are alerted: `alongside` the station (the default),
        `before` it, or `off` (a village that turns its neighbours off)."""
        state = self.villages.get(village) if village else None
        return state.neighbours_order if state is not None and state.neighbours_order else DEFAULT_NEIGHBOURS_ORDER

    def neighbour_covers(self, village: str | None) -> bool:
        """Whether a neighbour's accept covers as the leader half in `village` (the default: no)."""
        state = self.villages.get(village) if village else None
        return state is not None and state.neighbour_covers is True

    def neighbour_groups(self, village: str, group: str) -> list[GroupState]:
        """A group's neighbours: as the village's settings name them, else the village's live groups
        nearest to it in their numbering (the next, the previous, the one after next, ...), at most
        DEFAULT_NEIGHBOUR_GROUPS."""
        state = self.villages.get(village)
        named = state.neighbours.get(group) if state is not None and state.neighbours is not None else None
        if named is not None:
            found = [self.group(village, name) for name in named if name != group]
            return [g for g in found if g is not None]
        numbered, place = self._numbered(village)
        at = place.get(group)
        if at is None:
            return [g for g in numbered if not g.dissolved][:DEFAULT_NEIGHBOUR_GROUPS]
        nearest: list[GroupState] = []
        after, before = at + 1, at - 1
        while len(nearest) < DEFAULT_NEIGHBOUR_GROUPS and (after < len(numbered) or before >= 0):
            for i in (after, before):
                if 0 <= i < len(numbered) and not numbered[i].dissolved and len(nearest) < DEFAULT_NEIGHBOUR_GROUPS:
                    nearest.append(numbered[i])
            after, before = after + 1, before - 1
        return nearest

    def _numbered(self, village: str) -> tuple[list[GroupState], dict[str, int]]:
        """The village's groups ever formed, in their numbering, kept until a new group forms there."""
        cached = self._numbering.get(village)
        if cached is None:
            keys, ordered = self._ordered()
            lo, hi = _village_range(keys, village)
            numbered = sorted(ordered[lo:hi], key=lambda g: group_order(g.group))
            cached = self._numbering[village] = (numbered, {g.group: i for i, g in enumerate(numbered)})
        return cached

    def duty_desks(self, village: str) -> tuple[Person, ...]:
        """The village's duty desks."""
        state = self.villages.get(village)
        return tuple(state.duty_desks.values()) if state else ()

    def live_groups(self) -> list[GroupState]:
        """Every group not dissolved."""
        return [g for g in self.groups.values() if not g.dissolved]

    def _ordered(self) -> tuple[list[tuple[str, str]], list[GroupState]]:
        """Every group ever formed, dissolved ones too, by (village, group); kept until a new one forms."""
        if self._order is None:
            ordered = sorted(self.groups.values(), key=lambda g: (g.village, g.group))
            self._order = ([(g.village, g.group) for g in ordered], ordered)
        return self._order

    def page_groups(
        self, *, villages: frozenset[str] | None, after: tuple[str, str] | None, limit: int
    ) -> tuple[list[GroupState], bool]:
        """Up to `limit` live groups by (village, group) strictly after `after`, within `villages`
        (None: all); and whether more follow. Touches only the groups it returns (and the dissolved
        ones among them), never unpacks the others: a page costs the same at 100 groups or 100,000."""
        keys, ordered = self._ordered()
        start = bisect_right(keys, after) if after is not None else 0
        if villages is None:
            ranges = [(start, len(keys))]
        else:
            ranges = []
            for village in sorted(villages):
                lo, hi = _village_range(keys, village)
                if max(lo, start) < hi:
                    ranges.append((max(lo, start), hi))
        page: list[GroupState] = []
        for lo, hi in ranges:
            for i in range(lo, hi):
                group = ordered[i]
                if group.dissolved:
                    continue
                if len(page) == limit:
                    return page, True
                page.append(group)
        return page, False

    def groups_of(self, village: str) -> list[GroupState]:
        """A village's live groups by name."""
        return self.page_groups(villages=frozenset({village}), after=None, limit=len(self.groups))[0]

    def count_groups(self, villages: frozenset[str] | None) -> int:
        """Live groups within `villages` (None: all)."""
        if villages is None:
            return self._live
        keys, ordered = self._ordered()
        total = 0
        for village in villages:
            lo, hi = _village_range(keys, village)
            total += sum(1 for g in ordered[lo:hi] if not g.dissolved)
        return total

    def village_names(self) -> list[str]:
        """Villages with a live group or settings of their own, sorted; kept until either changes."""
        if self._names is None:
            names = {g.village for g in self.groups.values() if not g.dissolved}
            names.update(self.villages)
            self._names = sorted(names)
        return self._names

    def counts(self) -> tuple[int, int]:
        """(live groups, bound numbers)."""
        return self._live, len(self._by_phone)


class ChangeVillageSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Set a village's deadline overrides (seconds), time zone and whether proxy answers count
    toward cover; None means the service default. `actor`: who asks. `expected_seq`: the village's
    version (`VillageState.last_seq`, 0 for none) the settings were read at; another version is Stale."""

    village: str
    ack_deadline_s: float | None = None
    escalate_after_s: float | None = None
    arrival_deadline_s: float | None = None
    time_zone: str | None = None
    proxy_counts: bool | None = None
    neighbours_order: NeighboursOrder | None = None
    neighbour_covers: bool | None = None
    neighbours: dict[str, tuple[str, ...]] | None = None
    actor: Actor | None = None
    expected_seq: int | None = None


def decide_village_settings(state: VillageState | None, command: ChangeVillageSettings, now: datetime) -> list[Event]:
    """A village's settings decider: InvalidCommand unless the name, zone and deadlines make sense;
    Stale when the command expected another version of the village."""
    c = command
    version = state.last_seq if state is not None else 0
    if c.expected_seq is not None and c.expected_seq != version:
        raise Stale(
            f"the settings of {c.village} were changed meanwhile (version {version}, not {c.expected_seq}): "
            "read them again and apply your change to what they are now"
        )
    try:
        check_token("village", c.village)
    except InvalidToken as exc:
        raise InvalidCommand(str(exc)) from None
    if c.time_zone is not None and not valid_time_zone(c.time_zone):
        raise InvalidCommand(f"time_zone {c.time_zone!r} is not an IANA time zone (e.g. Asia/Shanghai)")
    values = [v for v in (c.ack_deadline_s, c.escalate_after_s, c.arrival_deadline_s) if v is not None]
    if any(not 1 <= v <= 86_400 for v in values):
        raise InvalidCommand("deadlines must be between 1 and 86400 seconds")
    if c.ack_deadline_s is not None and c.escalate_after_s is not None and c.ack_deadline_s > c.escalate_after_s:
        raise InvalidCommand("ack_deadline_s must not exceed escalate_after_s")
    if c.neighbours_order is not None and c.neighbours_order not in NEIGHBOURS_ORDERS:
        raise InvalidCommand(f"neighbours_order must be one of {', '.join(NEIGHBOURS_ORDERS)}")
    for group, names in (c.neighbours or {}).items():
        try:
            for name in (group, *names):
                check_token("group", name)
        except InvalidToken as exc:
            raise InvalidCommand(f"neighbours: {exc}") from None
        if group in names:
            raise InvalidCommand(f"neighbours: group {group} cannot be its own neighbour")
    return [
        VillageSettingsChanged(
            at=now,
            village=c.village,
            ack_deadline_s=c.ack_deadline_s,
            escalate_after_s=c.escalate_after_s,
            arrival_deadline_s=c.arrival_deadline_s,
            time_zone=c.time_zone,
            proxy_counts=c.proxy_counts,
            neighbours_order=c.neighbours_order,
            neighbour_covers=c.neighbour_covers,
            neighbours=c.neighbours,
            actor=c.actor,
        )
    ]


class DissolveGroup(msgspec.Struct, frozen=True, kw_only=True):
    """Dissolve a group: every member unbound, the group gone from the directory."""

    village: str
    group: str


def decide_dissolve(state: GroupState | None, command: DissolveGroup, now: datetime) -> list[Event]:
    """A group's dissolution decider: NotFound for a group never formed; nothing for one already
    dissolved (a retried dissolution succeeds); else each member's MemberUnbound, then GroupDissolved.
    Incidents already raised on the group keep their own responders, so they can still be closed."""
    if state is None:
        raise NotFound(f"no group {command.village}/{command.group}")
    if state.dissolved:
        return []
    village, group = state.village, state.group
    unbound: list[Event] = [MemberUnbound(at=now, village=village, group=group, phone=p) for p in state.members]
    return [*unbound, GroupDissolved(at=now, village=village, group=group)]
