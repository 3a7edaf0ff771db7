"""Roster read model in SQL: groups, their members, villages (duty desks, deadlines, time zone).

Ingress reads the in-memory directory (`directory.py`); this is the same fold on the shared read
side, for reports (readiness, officer names, a village's time zone) and for lookups from any
process sharing the database.

Invariants:
- a fold of the group and village events, applied in stream order: the rows equal what
  `dispatch.domain.directory.Directory` holds after the same events (a dissolved group keeps its
  row with `dissolved = 1` and no members);
- `changed_at` is the time of the group's last event; `bound_at` of a member's binding.
"""

from __future__ import annotations

from collections.abc import Sequence

from dispatch.events.model import (
    DutyDeskBound,
    DutyDeskUnbound,
    GroupDissolved,
    GroupEvent,
    GroupFormed,
    MemberBound,
    MemberRenamed,
    MemberUnbound,
    RoleAssigned,
    VillageEvent,
    VillageSettingsChanged,
)
from dispatch.events.subjects import GROUPS_ALL, VILLAGES_ALL
from dispatch.projections.sql import Connection
from dispatch.store.eventstore import Recorded

FAMILY = "roster"
VERSION = 1
GROUPS = f"roster_groups_v{VERSION}"
MEMBERS = f"roster_members_v{VERSION}"
VILLAGES = f"roster_villages_v{VERSION}"
DUTY_DESKS = f"roster_duty_desks_v{VERSION}"


class RosterProjection:
    family = FAMILY
    version = VERSION
    filter_subjects: tuple[str, ...] = (GROUPS_ALL, VILLAGES_ALL)
    server_filter = True
    legacy: tuple[tuple[str, int, tuple[str, ...]], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.family}_v{self.version}"

    def tables(self) -> Sequence[str]:
        return (GROUPS, MEMBERS, VILLAGES, DUTY_DESKS)

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
            f"CREATE INDEX IF NOT EXISTS {MEMBERS}_phone ON {MEMBERS} (phone)",
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
        )

    def apply_many(self, conn: Connection, recs: Sequence[Recorded], *, continued: bool = False) -> None:
        for rec in recs:
            if isinstance(rec.event, GroupEvent):
                self._group(conn, rec.event)
            elif isinstance(rec.event, VillageEvent):
                self._village(conn, rec.event)

    def forget(self) -> None:
        return None

    def _group(self, conn: Connection, event: GroupEvent) -> None:
        at = event.at.timestamp()
        key = (event.village, event.group)
        conn.execute(
            f"INSERT INTO {GROUPS} (village, grp, dissolved, formed_at, changed_at) VALUES (?, ?, 0, ?, ?) "
            "ON CONFLICT (village, grp) DO UPDATE SET changed_at = excluded.changed_at",
            (*key, at, at),
        )
        if isinstance(event, GroupFormed):
            conn.execute(f"UPDATE {GROUPS} SET dissolved = 0 WHERE village = ? AND grp = ?", key)
        elif isinstance(event, MemberBound):
            conn.execute(
                f"INSERT INTO {MEMBERS} (village, grp, phone, name, role, bound_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (village, grp, phone) DO UPDATE SET name = excluded.name, role = excluded.role",
                (*key, event.phone, event.name, event.role, at),
            )
        elif isinstance(event, MemberUnbound):
            conn.execute(f"DELETE FROM {MEMBERS} WHERE village = ? AND grp = ? AND phone = ?", (*key, event.phone))
        elif isinstance(event, RoleAssigned):
            conn.execute(
                f"UPDATE {MEMBERS} SET role = ? WHERE village = ? AND grp = ? AND phone = ?",
                (event.role, *key, event.phone),
            )
        elif isinstance(event, MemberRenamed):
            conn.execute(
                f"UPDATE {MEMBERS} SET name = ? WHERE village = ? AND grp = ? AND phone = ?",
                (event.name, *key, event.phone),
            )
        elif isinstance(event, GroupDissolved):
            conn.execute(f"DELETE FROM {MEMBERS} WHERE village = ? AND grp = ?", key)
            conn.execute(f"UPDATE {GROUPS} SET dissolved = 1 WHERE village = ? AND grp = ?", key)

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
