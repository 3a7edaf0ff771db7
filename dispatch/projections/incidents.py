"""Incident history read model: one row per incident, per responder, per timeline entry.

Invariants:
- every column is a fold of the incident's events; "first" times never move once set;
- times are stored as UTC epoch seconds (DOUBLE PRECISION) so range filters and response-time
  arithmetic are the same on SQLite and PostgreSQL;
- applying the same event twice is harmless, but the runner's checkpoint makes sure it never is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from dispatch.events.model import (
    CallRepeated,
    DeliveryFailed,
    DeliverySucceeded,
    IncidentCancelled,
    IncidentCovered,
    IncidentEscalated,
    IncidentEvent,
    IncidentOpened,
    IncidentResolved,
    ResponderAccepted,
    ResponderArrived,
    ResponderDeclined,
    ResponderNotified,
    UnregisteredCall,
)
from dispatch.events.subjects import INCIDENTS_ALL
from dispatch.projections.sql import Connection
from dispatch.store.eventstore import Recorded

ROLE_ACCEPT_COLUMNS = {
    "officer": "officer_accept_at",
    "leader": "leader_accept_at",
    "assistant": "assistant_accept_at",
    "duty": "duty_accept_at",
}
_TIMELINE_SKIP = {"recipients", "duty_desks", "quorum", "incident_id", "at"}


def ts(value: datetime) -> float:
    return value.timestamp()


def timeline_detail(event: IncidentEvent) -> str:
    data = msgspec.to_builtins(event)
    return msgspec.json.encode({k: v for k, v in data.items() if k not in _TIMELINE_SKIP}).decode()


class IncidentsProjection:
    name = "incidents_v1"
    filter_subject = INCIDENTS_ALL

    def tables(self) -> Sequence[str]:
        return ("incidents", "incident_responders", "incident_timeline")

    def ddl(self) -> Sequence[str]:
        return (
            """CREATE TABLE IF NOT EXISTS incidents (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                village TEXT,
                grp TEXT,
                line TEXT NOT NULL,
                caller TEXT NOT NULL,
                caller_name TEXT NOT NULL,
                caller_role TEXT NOT NULL,
                channel TEXT NOT NULL,
                status TEXT NOT NULL,
                covered INTEGER NOT NULL DEFAULT 0,
                urgency INTEGER NOT NULL DEFAULT 1,
                recipients INTEGER NOT NULL,
                escalation_tier INTEGER NOT NULL DEFAULT 0,
                category TEXT,
                cancel_reason TEXT,
                raised_at DOUBLE PRECISION NOT NULL,
                first_notified_at DOUBLE PRECISION,
                first_delivered_at DOUBLE PRECISION,
                first_accept_at DOUBLE PRECISION,
                first_accept_role TEXT,
                officer_accept_at DOUBLE PRECISION,
                leader_accept_at DOUBLE PRECISION,
                assistant_accept_at DOUBLE PRECISION,
                duty_accept_at DOUBLE PRECISION,
                covered_at DOUBLE PRECISION,
                first_arrival_at DOUBLE PRECISION,
                closed_at DOUBLE PRECISION,
                updated_seq BIGINT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS incidents_village_raised ON incidents (village, raised_at)",
            "CREATE INDEX IF NOT EXISTS incidents_status_raised ON incidents (status, raised_at)",
            """CREATE TABLE IF NOT EXISTS incident_responders (
                incident_id TEXT NOT NULL,
                phone TEXT NOT NULL,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                recipient INTEGER NOT NULL,
                notified_at DOUBLE PRECISION,
                delivered_at DOUBLE PRECISION,
                failed_kind TEXT,
                accepted_at DOUBLE PRECISION,
                declined_at DOUBLE PRECISION,
                arrived_at DOUBLE PRECISION,
                PRIMARY KEY (incident_id, phone)
            )""",
            """CREATE TABLE IF NOT EXISTS incident_timeline (
                incident_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                type TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                detail TEXT NOT NULL,
                PRIMARY KEY (incident_id, seq)
            )""",
        )

    def apply(self, conn: Connection, rec: Recorded) -> None:
        event = rec.event
        if not isinstance(event, IncidentEvent):
            return
        iid, at, seq = event.incident_id, ts(event.at), rec.seq
        if isinstance(event, IncidentOpened):
            self._open(conn, event, seq)
        elif isinstance(event, CallRepeated):
            conn.execute(
                "UPDATE incidents SET urgency = CASE WHEN urgency < ? THEN ? ELSE urgency END, updated_seq = ? "
                "WHERE id = ?",
                (event.urgency, event.urgency, seq, iid),
            )
        elif isinstance(event, ResponderNotified):
            conn.execute(
                "UPDATE incident_responders SET notified_at = COALESCE(notified_at, ?) "
                "WHERE incident_id = ? AND phone = ?",
                (at, iid, event.phone),
            )
            conn.execute(
                "UPDATE incidents SET first_notified_at = COALESCE(first_notified_at, ?), "
                "status = CASE WHEN status = 'raised' THEN 'notifying' ELSE status END, updated_seq = ? WHERE id = ?",
                (at, seq, iid),
            )
        elif isinstance(event, DeliverySucceeded):
            conn.execute(
                "UPDATE incident_responders SET delivered_at = COALESCE(delivered_at, ?) "
                "WHERE incident_id = ? AND phone = ?",
                (at, iid, event.phone),
            )
            conn.execute(
                "UPDATE incidents SET first_delivered_at = COALESCE(first_delivered_at, ?), updated_seq = ? "
                "WHERE id = ?",
                (at, seq, iid),
            )
        elif isinstance(event, DeliveryFailed):
            conn.execute(
                "UPDATE incident_responders SET failed_kind = ? WHERE incident_id = ? AND phone = ?",
                (event.kind, iid, event.phone),
            )
        elif isinstance(event, ResponderAccepted):
            conn.execute(
                "UPDATE incident_responders SET accepted_at = COALESCE(accepted_at, ?), declined_at = NULL "
                "WHERE incident_id = ? AND phone = ?",
                (at, iid, event.phone),
            )
            role_col = ROLE_ACCEPT_COLUMNS.get(event.role)
            role_set = f"{role_col} = COALESCE({role_col}, ?), " if role_col else ""
            conn.execute(
                "UPDATE incidents SET first_accept_role = CASE WHEN first_accept_at IS NULL THEN ? "
                "ELSE first_accept_role END, first_accept_at = COALESCE(first_accept_at, ?), "
                "status = CASE WHEN status IN ('raised', 'notifying') THEN 'acknowledged' ELSE status END, "
                f"{role_set}updated_seq = ? WHERE id = ?",
                (event.role, at, *((at,) if role_col else ()), seq, iid),
            )
        elif isinstance(event, ResponderDeclined):
            conn.execute(
                "UPDATE incident_responders SET declined_at = ? WHERE incident_id = ? AND phone = ?",
                (at, iid, event.phone),
            )
        elif isinstance(event, ResponderArrived):
            conn.execute(
                "UPDATE incident_responders SET arrived_at = COALESCE(arrived_at, ?) "
                "WHERE incident_id = ? AND phone = ?",
                (at, iid, event.phone),
            )
            conn.execute(
                "UPDATE incidents SET first_arrival_at = COALESCE(first_arrival_at, ?), "
                "status = CASE WHEN status IN ('resolved', 'cancelled') THEN status ELSE 'on_scene' END, "
                "updated_seq = ? WHERE id = ?",
                (at, seq, iid),
            )
        elif isinstance(event, IncidentCovered):
            conn.execute(
                "UPDATE incidents SET covered = 1, covered_at = COALESCE(covered_at, ?), updated_seq = ? WHERE id = ?",
                (at, seq, iid),
            )
        elif isinstance(event, IncidentEscalated):
            conn.execute(
                "UPDATE incidents SET escalation_tier = CASE WHEN escalation_tier < ? THEN ? ELSE escalation_tier END, "
                "updated_seq = ? WHERE id = ?",
                (event.tier, event.tier, seq, iid),
            )
        elif isinstance(event, IncidentResolved):
            conn.execute(
                "UPDATE incidents SET status = 'resolved', category = ?, closed_at = ?, updated_seq = ? WHERE id = ?",
                (event.category, at, seq, iid),
            )
        elif isinstance(event, IncidentCancelled):
            conn.execute(
                "UPDATE incidents SET status = 'cancelled', cancel_reason = ?, closed_at = ?, updated_seq = ? "
                "WHERE id = ?",
                (event.reason, at, seq, iid),
            )
        conn.execute(
            "INSERT INTO incident_timeline (incident_id, seq, type, at, detail) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (incident_id, seq) DO NOTHING",
            (iid, seq, type(event).__name__, at, timeline_detail(event)),
        )

    @staticmethod
    def _open(conn: Connection, event: IncidentOpened, seq: int) -> None:
        kind = "unregistered" if isinstance(event, UnregisteredCall) else "alarm"
        conn.execute(
            "INSERT INTO incidents (id, kind, village, grp, line, caller, caller_name, caller_role, channel, status, "
            "urgency, recipients, raised_at, updated_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'raised', 1, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (
                event.incident_id,
                kind,
                event.village,
                event.group,
                event.line,
                event.caller.phone,
                event.caller.name,
                event.caller.role,
                event.channel,
                len(event.recipients),
                ts(event.at),
                seq,
            ),
        )
        rows = [(event.incident_id, p.phone, p.name, p.role, 1) for p in event.recipients] + [
            (event.incident_id, d.phone, d.name, d.role, 0)
            for d in event.duty_desks
            if d.phone not in {p.phone for p in event.recipients}
        ]
        if rows:
            conn.executemany(
                "INSERT INTO incident_responders (incident_id, phone, name, role, recipient) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (incident_id, phone) DO NOTHING",
                rows,
            )
