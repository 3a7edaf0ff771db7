"""Roster read model in SQL: groups, their members, villages (duty desks, deadlines, time zone),
members' absences.

Ingress reads the in-memory directory (`directory.py`); this is the same fold on the shared read
side, for reports (readiness, officer names, a village's time zone) and for lookups from any
process sharing the database.

Invariants:
- a fold of the group and village events, applied in stream order: the rows equal what
  `dispatch.domain.directory.Directory` holds after the same events (a dissolved group keeps its
  row with `dissolved = 1` and no members);
- `changed_at` is the time of the group's last event; `bound_at` of a member's (last) binding;
- an absence row is a member's absence as last set (AbsenceSet), gone once ended (AbsenceEnded);
  whether it holds is a matter of `now` (`starts <= now < until`), judged by the reader;
- a batch writes each touched row once (see `_GroupBatch`): the result equals applying its events
  one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

from dispatch.events.model import (
    AbsenceEnded,
    AbsenceSet,
    DutyDeskBound,
    DutyDeskUnbound,
    GroupDissolved,
    GroupEvent,
    GroupFormed,
    MemberBound,
    MemberEvent,
    MemberRenamed,
    MemberUnbound,
    RoleAssigned,
    VillageEvent,
    VillageSettingsChanged,
)
from dispatch.events.subjects import GROUPS_ALL, MEMBERS_ALL, VILLAGES_ALL
from dispatch.projections.sql import Connection
from dispatch.store.eventstore import Recorded

FAMILY = "roster"
VERSION = 1
GROUPS = f"roster_groups_v{VERSION}"
MEMBERS = f"roster_members_v{VERSION}"
VILLAGES = f"roster_villages_v{VERSION}"
DUTY_DESKS = f"roster_duty_desks_v{VERSION}"
ABSENCES = f"roster_absences_v{VERSION}"


class RosterProjection:
    family = FAMILY
    version = VERSION
    filter_subjects: tuple[str, ...] = (GROUPS_ALL, VILLAGES_ALL, MEMBERS_ALL)
    server_filter = True
    legacy: tuple[tuple[str, int, tuple[str, ...]], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.family}_v{self.version}"

    def tables(self) -> Sequence[str]:
        return (GROUPS, MEMBERS, VILLAGES, DUTY_DESKS, ABSENCES)

    def ddl(self) -> Sequence[str]:
        return (
            f"""CREATE TABLE IF NOT EXISTS {GROUPS} (
                village TEXT NOT NULL,
                grp TEXT NOT NULL,
                dissolved INTEGER NOT NULL DEFAULT 0,
                formed_at DOUBLE PRECISION NOT NULL,
                changed_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (village, grp)
            )""",
            f"""CREATE TABLE IF NOT EXISTS {MEMBERS} (
                village TEXT NOT NULL,
                grp TEXT NOT NULL,
                phone TEXT NOT NULL,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                bound_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (village, grp, phone)
            )""",
            f"""CREATE TABLE IF NOT EXISTS {VILLAGES} (
                village TEXT PRIMARY KEY,
                time_zone TEXT,
                ack_deadline_s DOUBLE PRECISION,
                escalate_after_s DOUBLE PRECISION,
                arrival_deadline_s DOUBLE PRECISION,
                changed_at DOUBLE PRECISION NOT NULL
            )""",
            f"""CREATE TABLE IF NOT EXISTS {DUTY_DESKS} (
                village TEXT NOT NULL,
                phone TEXT NOT NULL,
                name TEXT NOT NULL,
                PRIMARY KEY (village, phone)
            )""",
            f"""CREATE TABLE IF NOT EXISTS {ABSENCES} (
                phone TEXT PRIMARY KEY,
                starts_at DOUBLE PRECISION NOT NULL,
                until_at DOUBLE PRECISION NOT NULL,
                substitute TEXT,
                substitute_name TEXT NOT NULL,
                note TEXT NOT NULL,
                set_at DOUBLE PRECISION NOT NULL
            )""",
        )

    def indexes(self) -> Sequence[str]:
        return (f"CREATE INDEX IF NOT EXISTS {MEMBERS}_phone ON {MEMBERS} (phone)",)

    def apply_many(self, conn: Connection, recs: Sequence[Recorded], *, continued: bool = False) -> None:
        batch = _GroupBatch()
        for rec in recs:
            if isinstance(rec.event, GroupEvent):
                batch.apply(rec.event)
            elif isinstance(rec.event, VillageEvent):
                self._village(conn, rec.event)
            elif isinstance(rec.event, MemberEvent):
                self._member(conn, rec.event)
        batch.write(conn)

    def forget(self) -> None:
        return None

    def _member(self, conn: Connection, event: MemberEvent) -> None:
        if isinstance(event, AbsenceSet):
            conn.execute(
                f"INSERT INTO {ABSENCES} (phone, starts_at, until_at, substitute, substitute_name, note, set_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (phone) DO UPDATE SET starts_at = excluded.starts_at,"
                " until_at = excluded.until_at, substitute = excluded.substitute,"
                " substitute_name = excluded.substitute_name, note = excluded.note, set_at = excluded.set_at",
                (
                    event.phone,
                    event.starts.timestamp(),
                    event.until.timestamp(),
                    event.substitute,
                    event.substitute_name,
                    event.note,
                    event.at.timestamp(),
                ),
            )
        elif isinstance(event, AbsenceEnded):
            conn.execute(f"DELETE FROM {ABSENCES} WHERE phone = ?", (event.phone,))

    def _village(self, conn: Connection, event: VillageEvent) -> None:
        at = event.at.timestamp()
        conn.execute(
            f"INSERT INTO {VILLAGES} (village, changed_at) VALUES (?, ?) "
            "ON CONFLICT (village) DO UPDATE SET changed_at = excluded.changed_at",
            (event.village, at),
        )
        if isinstance(event, DutyDeskBound):
            conn.execute(
                f"INSERT INTO {DUTY_DESKS} (village, phone, name) VALUES (?, ?, ?) "
                "ON CONFLICT (village, phone) DO UPDATE SET name = excluded.name",
                (event.village, event.phone, event.name),
            )
        elif isinstance(event, DutyDeskUnbound):
            conn.execute(f"DELETE FROM {DUTY_DESKS} WHERE village = ? AND phone = ?", (event.village, event.phone))
        elif isinstance(event, VillageSettingsChanged):
            conn.execute(
                f"UPDATE {VILLAGES} SET time_zone = ?, ack_deadline_s = ?, escalate_after_s = ?,"
                " arrival_deadline_s = ? WHERE village = ?",
                (
                    event.time_zone,
                    event.ack_deadline_s,
                    event.escalate_after_s,
                    event.arrival_deadline_s,
                    event.village,
                ),
            )


Key = tuple[str, str, str]


class _GroupBatch:
    """A batch of group events folded to one final write per row (an import of thousands of groups
    is a handful of statements, not two per event). Member rows end as a whole row to put, a
    delete, or a rename / role change of a row the batch did not bind."""

    def __init__(self) -> None:
        self.touched: dict[tuple[str, str], list[float]] = {}
        self.dissolved: dict[tuple[str, str], int] = {}
        self.cleared: list[tuple[str, str]] = []
        self.put: dict[Key, tuple[str, str, float]] = {}
        self.gone: set[Key] = set()
        self.renamed: dict[Key, str] = {}
        self.reassigned: dict[Key, str] = {}

    def apply(self, event: GroupEvent) -> None:
        at = event.at.timestamp()
        group = (event.village, event.group)
        times = self.touched.setdefault(group, [at, at])
        times[1] = at
        if isinstance(event, GroupFormed):
            self.dissolved[group] = 0
        elif isinstance(event, GroupDissolved):
            self.dissolved[group] = 1
            self.cleared.append(group)
            for key in [k for k in (*self.put, *self.renamed, *self.reassigned) if k[:2] == group]:
                self._forget(key)
                self.gone.add(key)
        elif isinstance(event, MemberBound):
            key = (*group, event.phone)
            self._forget(key)
            self.gone.discard(key)
            self.put[key] = (event.name, event.role, at)
        elif isinstance(event, MemberUnbound):
            key = (*group, event.phone)
            self._forget(key)
            self.gone.add(key)
        elif isinstance(event, RoleAssigned):
            key = (*group, event.phone)
            if key in self.put:
                name, _, bound = self.put[key]
                self.put[key] = (name, event.role, bound)
            elif key not in self.gone:
                self.reassigned[key] = event.role
        elif isinstance(event, MemberRenamed):
            key = (*group, event.phone)
            if key in self.put:
                _, role, bound = self.put[key]
                self.put[key] = (event.name, role, bound)
            elif key not in self.gone:
                self.renamed[key] = event.name

    def _forget(self, key: Key) -> None:
        self.put.pop(key, None)
        self.renamed.pop(key, None)
        self.reassigned.pop(key, None)

    def write(self, conn: Connection) -> None:
        if not self.touched:
            return
        conn.executemany(
            f"INSERT INTO {GROUPS} (village, grp, dissolved, formed_at, changed_at) VALUES (?, ?, 0, ?, ?) "
            "ON CONFLICT (village, grp) DO UPDATE SET changed_at = excluded.changed_at",
            [(v, g, first, last) for (v, g), (first, last) in self.touched.items()],
        )
        if self.dissolved:
            conn.executemany(
                f"UPDATE {GROUPS} SET dissolved = ? WHERE village = ? AND grp = ?",
                [(flag, v, g) for (v, g), flag in self.dissolved.items()],
            )
        if self.cleared:
            conn.executemany(f"DELETE FROM {MEMBERS} WHERE village = ? AND grp = ?", self.cleared)
        if self.gone:
            conn.executemany(f"DELETE FROM {MEMBERS} WHERE village = ? AND grp = ? AND phone = ?", sorted(self.gone))
        conn.upsert_many(
            MEMBERS,
            ("village", "grp", "phone", "name", "role", "bound_at"),
            ("village", "grp", "phone"),
            [(*key, name, role, bound) for key, (name, role, bound) in self.put.items()],
        )
        if self.reassigned:
            conn.executemany(
                f"UPDATE {MEMBERS} SET role = ? WHERE village = ? AND grp = ? AND phone = ?",
                [(role, *key) for key, role in self.reassigned.items()],
            )
        if self.renamed:
            conn.executemany(
                f"UPDATE {MEMBERS} SET name = ? WHERE village = ? AND grp = ? AND phone = ?",
                [(name, *key) for key, name in self.renamed.items()],
            )
