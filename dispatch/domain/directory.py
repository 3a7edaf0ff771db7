"""The directory: who is in which group, and which duty desks serve which village.

A fold of Group and Village events, kept in memory by every process (ingress reads it on the
hot path). Invariants:
- `apply` is deterministic and idempotent per stream sequence: an event at or below the
  sequence already applied for its aggregate is ignored;
- each group and village remembers the stream sequence of its last event, which is the
  expected-last-subject-sequence for the next change (optimistic concurrency on import);
- `memberships(phone)` lists live groups only, in a stable order (village, group).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dispatch.events.model import (
    DutyDeskBound,
    DutyDeskUnbound,
    Event,
    GroupDissolved,
    GroupEvent,
    GroupFormed,
    MemberBound,
    MemberRenamed,
    MemberUnbound,
    Person,
    RoleAssigned,
    VillageEvent,
    VillageSettingsChanged,
)
from dispatch.events.subjects import group_id


@dataclass(slots=True)
class GroupState:
    village: str
    group: str
    members: dict[str, Person] = field(default_factory=dict)
    last_seq: int = 0
    dissolved: bool = False

    @property
    def id(self) -> str:
        return group_id(self.village, self.group)

    def leader(self) -> Person | None:
        return next((m for m in self.members.values() if m.role == "leader"), None)


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds from raise to tier 1 (ack), from raise to tier 2 (escalate), from cover to arrival."""

    ack_s: float = 60.0
    escalate_s: float = 300.0
    arrival_s: float = 1200.0


@dataclass(slots=True)
class VillageState:
    village: str
    duty_desks: dict[str, Person] = field(default_factory=dict)
    last_seq: int = 0
    ack_deadline_s: float | None = None
    escalate_after_s: float | None = None
    arrival_deadline_s: float | None = None
    time_zone: str | None = None

    def deadlines(self, defaults: Deadlines) -> Deadlines:
        return Deadlines(
            ack_s=self.ack_deadline_s if self.ack_deadline_s is not None else defaults.ack_s,
            escalate_s=self.escalate_after_s if self.escalate_after_s is not None else defaults.escalate_s,
            arrival_s=self.arrival_deadline_s if self.arrival_deadline_s is not None else defaults.arrival_s,
        )


@dataclass(slots=True)
class Membership:
    group: GroupState
    person: Person


class Directory:
    """Mutable fold of the directory events; not thread-safe (one event loop owns it)."""

    def __init__(self) -> None:
        self.groups: dict[str, GroupState] = {}
        self.villages: dict[str, VillageState] = {}
        self._by_phone: dict[str, set[str]] = {}
        self.position = 0

    def apply(self, event: Event, seq: int) -> None:
        if isinstance(event, GroupEvent):
            self._apply_group(event, seq)
        elif isinstance(event, VillageEvent):
            self._apply_village(event, seq)
        self.position = max(self.position, seq)

    def _apply_group(self, event: GroupEvent, seq: int) -> None:
        gid = group_id(event.village, event.group)
        state = self.groups.get(gid)
        if state is not None and seq <= state.last_seq:
            return
        if state is None:
            state = self.groups[gid] = GroupState(event.village, event.group)
        state.last_seq = seq
        if isinstance(event, GroupFormed):
            state.dissolved = False
        elif isinstance(event, MemberBound):
            state.members[event.phone] = Person(phone=event.phone, name=event.name, role=event.role)
            self._by_phone.setdefault(event.phone, set()).add(gid)
        elif isinstance(event, MemberUnbound):
            state.members.pop(event.phone, None)
            self._unindex(event.phone, gid)
        elif isinstance(event, RoleAssigned):
            old = state.members.get(event.phone)
            if old is not None:
                state.members[event.phone] = Person(phone=old.phone, name=old.name, role=event.role)
        elif isinstance(event, MemberRenamed):
            old = state.members.get(event.phone)
            if old is not None:
                state.members[event.phone] = Person(phone=old.phone, name=event.name, role=old.role)
        elif isinstance(event, GroupDissolved):
            for phone in state.members:
                self._unindex(phone, gid)
            state.members.clear()
            state.dissolved = True

    def _apply_village(self, event: VillageEvent, seq: int) -> None:
        state = self.villages.get(event.village)
        if state is not None and seq <= state.last_seq:
            return
        if state is None:
            state = self.villages[event.village] = VillageState(event.village)
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

    def _unindex(self, phone: str, gid: str) -> None:
        groups = self._by_phone.get(phone)
        if groups is not None:
            groups.discard(gid)
            if not groups:
                del self._by_phone[phone]

    def memberships(self, phone: str) -> list[Membership]:
        gids = self._by_phone.get(phone)
        if not gids:
            return []
        found = []
        for gid in sorted(gids):
            group = self.groups[gid]
            person = group.members.get(phone)
            if person is not None and not group.dissolved:
                found.append(Membership(group, person))
        return found

    def group(self, village: str, group: str) -> GroupState | None:
        state = self.groups.get(group_id(village, group))
        return None if state is None or state.dissolved else state

    def deadlines(self, village: str | None, defaults: Deadlines) -> Deadlines:
        state = self.villages.get(village) if village else None
        return state.deadlines(defaults) if state else defaults

    def duty_desks(self, village: str) -> tuple[Person, ...]:
        state = self.villages.get(village)
        return tuple(state.duty_desks.values()) if state else ()

    def live_groups(self) -> list[GroupState]:
        return [g for g in self.groups.values() if not g.dissolved]

    def counts(self) -> tuple[int, int]:
        """(live groups, bound numbers)."""
        return len(self.live_groups()), len(self._by_phone)
