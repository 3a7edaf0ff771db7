"""Incident history read model: one row per incident and one per responder.

The timeline of one incident is not copied here: it is folded from the log, which holds it whole.

Invariants:
- rows are a fold of the incident's events: a batch loads the rows it touches once, folds its
  events into them in memory, and writes each touched row once (an alarm and its delivery
  notices, arriving together, cost one insert each instead of a statement per event);
- "first" times never move once set; times are UTC epoch seconds (DOUBLE PRECISION) so range
  filters and response-time arithmetic are the same on SQLite and PostgreSQL;
- every column but `events` is idempotent; `events` counts the incident's events applied, so a
  double application would show (the runner's checkpoint makes sure there never is one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter

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
    RespondersNotified,
    UnregisteredCall,
)
from dispatch.events.subjects import SINGLE_TOKEN_AGGREGATES
from dispatch.projections.sql import Connection
from dispatch.store.eventstore import Recorded

ROLE_ACCEPT_COLUMNS = {
    "officer": "officer_accept_at",
    "leader": "leader_accept_at",
    "assistant": "assistant_accept_at",
    "duty": "duty_accept_at",
}
CLOSED = ("resolved", "cancelled")


def ts(value: datetime) -> float:
    return value.timestamp()


@dataclass(slots=True)
class IncidentRow:
    id: str
    kind: str
    village: str | None
    grp: str | None
    line: str
    caller: str
    caller_name: str
    caller_role: str
    channel: str
    status: str
    covered: int
    urgency: int
    recipients: int
    escalation_tier: int
    category: str | None
    cancel_reason: str | None
    raised_at: float
    ack_deadline_at: float
    first_notified_at: float | None
    first_delivered_at: float | None
    first_accept_at: float | None
    first_accept_role: str | None
    officer_accept_at: float | None
    leader_accept_at: float | None
    assistant_accept_at: float | None
    duty_accept_at: float | None
    covered_at: float | None
    first_arrival_at: float | None
    closed_at: float | None
    events: int
    updated_seq: int


@dataclass(slots=True)
class ResponderRow:
    incident_id: str
    phone: str
    name: str
    role: str
    recipient: int
    notified_at: float | None = None
    delivered_at: float | None = None
    failed_kind: str | None = None
    accepted_at: float | None = None
    declined_at: float | None = None
    arrived_at: float | None = None


INCIDENT_COLUMNS = tuple(f.name for f in fields(IncidentRow))
RESPONDER_COLUMNS = tuple(f.name for f in fields(ResponderRow))
incident_values = attrgetter(*INCIDENT_COLUMNS)
responder_values = attrgetter(*RESPONDER_COLUMNS)
CACHE_INCIDENTS = 20_000


def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


UPSERT_INCIDENT = _upsert("incidents", INCIDENT_COLUMNS, ("id",))
UPSERT_RESPONDER = _upsert("incident_responders", RESPONDER_COLUMNS, ("incident_id", "phone"))


def _first(current: float | None, at: float) -> float:
    return at if current is None else current


class IncidentsProjection:
    """The fold keeps recently written rows between batches; `apply_many` is told whether anyone
    else wrote since (`continued`), and forgets them when someone did."""

    name = "incidents_v1"
    filter_subject = SINGLE_TOKEN_AGGREGATES

    def __init__(self) -> None:
        self._rows: OrderedDict[str, IncidentRow | None] = OrderedDict()
        self._responders: dict[str, dict[str, ResponderRow]] = {}

    def tables(self) -> Sequence[str]:
        return ("incidents", "incident_responders")

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
                ack_deadline_at DOUBLE PRECISION NOT NULL,
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
                events INTEGER NOT NULL DEFAULT 0,
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
        )

    def apply_many(self, conn: Connection, recs: Sequence[Recorded], *, continued: bool = False) -> None:
        if not continued:
            self.forget()
        batch = _Batch(conn, self._rows, self._responders)
        for rec in recs:
            if isinstance(rec.event, IncidentEvent):
                batch.apply(rec.event, rec.seq)
        batch.write()
        while len(self._rows) > CACHE_INCIDENTS:
            old, _ = self._rows.popitem(last=False)
            self._responders.pop(old, None)

    def forget(self) -> None:
        """Drop cached rows (another writer may have changed them, or a transaction rolled back)."""
        self._rows.clear()
        self._responders.clear()


class _Batch:
    """The rows one batch touches: taken from the cache or loaded once, folded in memory, written once."""

    def __init__(
        self,
        conn: Connection,
        rows: OrderedDict[str, IncidentRow | None],
        responders: dict[str, dict[str, ResponderRow]],
    ) -> None:
        self.conn = conn
        self.rows = rows
        self.responders = responders
        self.dirty_rows: set[str] = set()
        self.dirty_responders: set[tuple[str, str]] = set()

    def _row(self, incident_id: str) -> IncidentRow | None:
        if incident_id in self.rows:
            self.rows.move_to_end(incident_id)
            return self.rows[incident_id]
        found = self.conn.one(f"SELECT {', '.join(INCIDENT_COLUMNS)} FROM incidents WHERE id = ?", (incident_id,))
        self.rows[incident_id] = IncidentRow(*found) if found else None
        if found:
            self.responders[incident_id] = {
                r.phone: r
                for r in (
                    ResponderRow(*values)
                    for values in self.conn.query(
                        f"SELECT {', '.join(RESPONDER_COLUMNS)} FROM incident_responders WHERE incident_id = ?",
                        (incident_id,),
                    )
                )
            }
        return self.rows[incident_id]

    def _responder(self, incident_id: str, phone: str) -> ResponderRow | None:
        r = self.responders.get(incident_id, {}).get(phone)
        if r is not None:
            self.dirty_responders.add((incident_id, phone))
        return r

    def apply(self, event: IncidentEvent, seq: int) -> None:
        iid, at = event.incident_id, ts(event.at)
        if isinstance(event, IncidentOpened):
            if self._row(iid) is None:
                self._open(event, seq)
            return
        row = self._row(iid)
        if row is None:
            return
        self.dirty_rows.add(iid)
        row.events += 1
        row.updated_seq = seq
        if isinstance(event, CallRepeated):
            row.urgency = max(row.urgency, event.urgency)
        elif isinstance(event, RespondersNotified):
            for phone in event.phones:
                r = self._responder(iid, phone)
                if r is not None:
                    r.notified_at = _first(r.notified_at, at)
            row.first_notified_at = _first(row.first_notified_at, at)
            if row.status == "raised":
                row.status = "notifying"
        elif isinstance(event, DeliverySucceeded):
            for target in event.targets:
                r = self._responder(iid, target.phone)
                if r is not None:
                    r.delivered_at = _first(r.delivered_at, at)
            row.first_delivered_at = _first(row.first_delivered_at, at)
        elif isinstance(event, DeliveryFailed):
            for failure in event.failures:
                r = self._responder(iid, failure.phone)
                if r is not None and failure.kind != "withdrawn":
                    r.failed_kind = failure.kind
        elif isinstance(event, ResponderAccepted):
            r = self._responder(iid, event.phone)
            if r is not None:
                r.accepted_at = _first(r.accepted_at, at)
                r.declined_at = None
            if row.first_accept_at is None:
                row.first_accept_role = event.role
            row.first_accept_at = _first(row.first_accept_at, at)
            column = ROLE_ACCEPT_COLUMNS.get(event.role)
            if column is not None:
                setattr(row, column, _first(getattr(row, column), at))
            if row.status in ("raised", "notifying"):
                row.status = "acknowledged"
        elif isinstance(event, ResponderDeclined):
            r = self._responder(iid, event.phone)
            if r is not None:
                r.declined_at = at
        elif isinstance(event, ResponderArrived):
            r = self._responder(iid, event.phone)
            if r is not None:
                r.arrived_at = _first(r.arrived_at, at)
            row.first_arrival_at = _first(row.first_arrival_at, at)
            if row.status not in CLOSED:
                row.status = "on_scene"
        elif isinstance(event, IncidentCovered):
            row.covered = 1
            row.covered_at = _first(row.covered_at, at)
        elif isinstance(event, IncidentEscalated):
            row.escalation_tier = max(row.escalation_tier, event.tier)
        elif isinstance(event, IncidentResolved):
            row.status, row.category, row.closed_at = "resolved", event.category, at
        elif isinstance(event, IncidentCancelled):
            row.status, row.cancel_reason, row.closed_at = "cancelled", event.reason, at

    def _open(self, event: IncidentOpened, seq: int) -> None:
        iid = event.incident_id
        kind = "unregistered" if isinstance(event, UnregisteredCall) else "alarm"
        self.rows[iid] = IncidentRow(
            id=iid,
            kind=kind,
            village=event.village,
            grp=event.group,
            line=event.line,
            caller=event.caller.phone,
            caller_name=event.caller.name,
            caller_role=event.caller.role,
            channel=event.channel,
            status="raised",
            covered=0,
            urgency=1,
            recipients=len(event.recipients),
            escalation_tier=0,
            category=None,
            cancel_reason=None,
            raised_at=ts(event.at),
            ack_deadline_at=ts(event.at) + event.ack_deadline_s,
            first_notified_at=None,
            first_delivered_at=None,
            first_accept_at=None,
            first_accept_role=None,
            officer_accept_at=None,
            leader_accept_at=None,
            assistant_accept_at=None,
            duty_accept_at=None,
            covered_at=None,
            first_arrival_at=None,
            closed_at=None,
            events=1,
            updated_seq=seq,
        )
        self.dirty_rows.add(iid)
        people = self.responders.setdefault(iid, {})
        for person, recipient in [(p, 1) for p in event.recipients] + [(d, 0) for d in event.duty_desks]:
            if person.phone not in people:
                people[person.phone] = ResponderRow(iid, person.phone, person.name, person.role, recipient)
                self.dirty_responders.add((iid, person.phone))

    def write(self) -> None:
        rows = [incident_values(r) for iid in self.dirty_rows if (r := self.rows.get(iid)) is not None]
        if rows:
            self.conn.executemany(UPSERT_INCIDENT, rows)
        responders = [responder_values(self.responders[iid][phone]) for iid, phone in self.dirty_responders]
        if responders:
            self.conn.executemany(UPSERT_RESPONDER, responders)
