"""Incident history read model: one row per incident and one per person alerted (version 2).

The timeline of one incident is not copied here: it is folded from the log, which holds it whole.

Invariants:
- rows are a fold of the incident's events: a batch loads the rows it touches (but has not cached
  and is not opening) in one query, folds
  its events into them in memory, and writes each touched incident once, with all its responder
  rows (an alarm and its delivery notices, arriving together, cost one write per row instead of a
  statement per event);
- "first" times never move once set; times are UTC epoch seconds (DOUBLE PRECISION) so range
  filters and response-time arithmetic are the same on SQLite and PostgreSQL;
- the deadlines are the ones snapshotted in the incident's opening event (the village's overrides
  at raise time), so a breach is judged by the rules the incident was raised under;
- a responder's `failed_kind` is `permanent` once any channel failed permanently (it never goes
  back to `exhausted`); a `withdrawn` retry (the person answered, or the incident closed) is not a
  failure and leaves it alone; `raised_at`, `village`, `grp` are copied onto responder rows so a member's
  last alarms are one indexed read;
- rows are msgspec Structs of scalars, which the cyclic GC does not track: the cache (up to
  CACHE_INCIDENTS incidents, ~11 rows each) adds nothing to a full collection, which holds the
  event loop (20k incidents as slotted dataclasses: 86 ms a collection; as Structs: 18 ms);
- the cache is there so that the batches an incident's events arrive in (its alarm and notices
  within seconds, its answers within minutes) do not read its rows back each time; a row not cached
  costs one indexed read, never a wrong row. Each cached incident holds ~5 KB (its rows and the
  strings decoded for them), so CACHE_INCIDENTS = 2,000 is ~10 MB: the incidents of the last
  ~7 minutes at 5 alarms/s, a county's worst evening, and of days at its ordinary rate;
- every column but `events` is idempotent; `events` counts the incident's events applied, so a
  double application would show (the runner's checkpoint makes sure there never is one).

Version 2 added the arrival deadline, the call count and the responder copies of time and place
(version 1's tables, `incidents` and `incident_responders`, are retired when version 2 takes over).
Version 3 added the caller's address and coordinates.
Version 4 added who recorded the answers: own and proxy accepts, a cover met with a proxy answer,
and whether the cover was relaxed (a clause of the policy dropped at raise time) or full.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

import msgspec

from dispatch.domain.messages import relaxed_of
from dispatch.events.model import (
    Actor,
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
from dispatch.events.subjects import INCIDENTS_ALL, NOTICES_ALL
from dispatch.projections.sql import Connection, marks
from dispatch.store.eventstore import Recorded

FAMILY = "incidents"
VERSION = 5
INCIDENTS = f"incidents_v{VERSION}"
RESPONDERS = f"incident_responders_v{VERSION}"
ROLE_ACCEPT_COLUMNS = {
    "officer": "officer_accept_at",
    "leader": "leader_accept_at",
    "assistant": "assistant_accept_at",
    "duty": "duty_accept_at",
}
CLOSED = ("resolved", "cancelled")
LOAD_CHUNK = 500


def ts(value: datetime) -> float:
    return value.timestamp()


class IncidentRow(msgspec.Struct):
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
    calls: int
    recipients: int
    escalation_tier: int
    category: str | None
    cancel_reason: str | None
    raised_at: float
    ack_deadline_at: float
    arrival_deadline_s: float
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
    caller_address: str = ""
    caller_lat: float | None = None
    caller_lon: float | None = None
    origin: str = "call"
    opened_by: str = ""
    silent: int = 0
    relaxed: int = 0
    cover_kind: str | None = None
    covered_by_proxy: int = 0
    own_accepts: int = 0
    proxy_accepts: int = 0
    proxy_by: str = ""
    neighbour_accepts: int = 0
    neighbours_by: str = ""


class ResponderRow(msgspec.Struct):
    incident_id: str
    phone: str
    name: str
    role: str
    recipient: int
    raised_at: float
    village: str | None
    grp: str | None
    notified_at: float | None = None
    delivered_at: float | None = None
    failed_kind: str | None = None
    accepted_at: float | None = None
    declined_at: float | None = None
    arrived_at: float | None = None
    accepted_proxy: int = 0
    accepted_by: str | None = None


INCIDENT_COLUMNS = IncidentRow.__struct_fields__
RESPONDER_COLUMNS = ResponderRow.__struct_fields__
incident_values = attrgetter(*INCIDENT_COLUMNS)
responder_values = attrgetter(*RESPONDER_COLUMNS)
CACHE_INCIDENTS = 2_000


def _actor_name(actor: Actor | None) -> str | None:
    """Who recorded an answer, as a report names them (None: stored before actors were kept)."""
    if actor is None:
        return None
    return actor.name or actor.phone or actor.channel


def _first(current: float | None, at: float) -> float:
    return at if current is None else current


class IncidentsProjection:
    """The fold keeps recently written rows between batches; `apply_many` is told whether anyone
    else wrote since (`continued`), and forgets them when someone did."""

    family = FAMILY
    version = VERSION
    filter_subjects: tuple[str, ...] = (INCIDENTS_ALL, NOTICES_ALL)
    server_filter = False
    legacy: tuple[tuple[str, int, tuple[str, ...]], ...] = (("incidents_v1", 1, ("incidents", "incident_responders")),)

    def __init__(self) -> None:
        self._rows: OrderedDict[str, IncidentRow | None] = OrderedDict()
        self._responders: dict[str, dict[str, ResponderRow]] = {}

    @property
    def name(self) -> str:
        return f"{self.family}_v{self.version}"

    def tables(self) -> Sequence[str]:
        return (INCIDENTS, RESPONDERS)

    def ddl(self) -> Sequence[str]:
        return (
            f"""CREATE TABLE IF NOT EXISTS {INCIDENTS} (
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
                calls INTEGER NOT NULL DEFAULT 1,
                recipients INTEGER NOT NULL,
                escalation_tier INTEGER NOT NULL DEFAULT 0,
                category TEXT,
                cancel_reason TEXT,
                raised_at DOUBLE PRECISION NOT NULL,
                ack_deadline_at DOUBLE PRECISION NOT NULL,
                arrival_deadline_s DOUBLE PRECISION NOT NULL,
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
                updated_seq BIGINT NOT NULL,
                caller_address TEXT NOT NULL DEFAULT '',
                caller_lat DOUBLE PRECISION,
                caller_lon DOUBLE PRECISION,
                origin TEXT NOT NULL DEFAULT 'call',
                opened_by TEXT NOT NULL DEFAULT '',
                silent INTEGER NOT NULL DEFAULT 0,
                relaxed INTEGER NOT NULL DEFAULT 0,
                cover_kind TEXT,
                covered_by_proxy INTEGER NOT NULL DEFAULT 0,
                own_accepts INTEGER NOT NULL DEFAULT 0,
                proxy_accepts INTEGER NOT NULL DEFAULT 0,
                proxy_by TEXT NOT NULL DEFAULT '',
                neighbour_accepts INTEGER NOT NULL DEFAULT 0,
                neighbours_by TEXT NOT NULL DEFAULT ''
            )""",
            f"""CREATE TABLE IF NOT EXISTS {RESPONDERS} (
                incident_id TEXT NOT NULL,
                phone TEXT NOT NULL,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                recipient INTEGER NOT NULL,
                raised_at DOUBLE PRECISION NOT NULL,
                village TEXT,
                grp TEXT,
                notified_at DOUBLE PRECISION,
                delivered_at DOUBLE PRECISION,
                failed_kind TEXT,
                accepted_at DOUBLE PRECISION,
                declined_at DOUBLE PRECISION,
                arrived_at DOUBLE PRECISION,
                accepted_proxy INTEGER NOT NULL DEFAULT 0,
                accepted_by TEXT,
                PRIMARY KEY (incident_id, phone)
            )""",
        )

    def indexes(self) -> Sequence[str]:
        return (
            f"CREATE INDEX IF NOT EXISTS {INCIDENTS}_raised ON {INCIDENTS} (raised_at)",
            f"CREATE INDEX IF NOT EXISTS {INCIDENTS}_village_raised ON {INCIDENTS} (village, grp, raised_at)",
            f"CREATE INDEX IF NOT EXISTS {INCIDENTS}_status_raised ON {INCIDENTS} (status, raised_at)",
            f"CREATE INDEX IF NOT EXISTS {INCIDENTS}_caller_raised ON {INCIDENTS} (caller, raised_at)",
            f"CREATE INDEX IF NOT EXISTS {RESPONDERS}_phone_raised ON {RESPONDERS} (phone, raised_at)",
        )

    def apply_many(self, conn: Connection, recs: Sequence[Recorded], *, continued: bool = False) -> None:
        if not continued:
            self.forget()
        batch = _Batch(conn, self._rows, self._responders)
        events = [rec for rec in recs if isinstance(rec.event, IncidentEvent)]
        batch.load(events)
        apply = batch.apply
        for rec in events:
            apply(rec.event, rec.seq)  # type: ignore[arg-type]
        batch.write()
        while len(self._rows) > CACHE_INCIDENTS:
            old, _ = self._rows.popitem(last=False)
            self._responders.pop(old, None)

    def forget(self) -> None:
        """Drop cached rows (another writer may have changed them, or a transaction rolled back)."""
        self._rows.clear()
        self._responders.clear()


class _Batch:
    """The rows one batch touches: taken from the cache or loaded at once, folded in memory, written once."""

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
        self.dirty_people: set[str] = set()

    def load(self, recs: Iterable[Recorded]) -> None:
        """Read every row the batch needs that the cache lacks, a chunk of ids per query.

        An incident whose first event here is its opening has no row yet (events at or below the
        checkpoint are never applied again, and an incident is opened once): nothing to read."""
        first: dict[str, bool] = {}
        for rec in recs:
            iid = rec.event.incident_id  # type: ignore[attr-defined]
            if iid not in first:
                first[iid] = isinstance(rec.event, IncidentOpened)
        missing = sorted(iid for iid, opening in first.items() if not opening and iid not in self.rows)
        for iid, opening in first.items():
            if opening and iid not in self.rows:
                self.rows[iid] = None
        for start in range(0, len(missing), LOAD_CHUNK):
            chunk = missing[start : start + LOAD_CHUNK]
            for iid in chunk:
                self.rows[iid] = None
            found = self.conn.query(
                f"SELECT {', '.join(INCIDENT_COLUMNS)} FROM {INCIDENTS} WHERE id IN ({marks(len(chunk))})", chunk
            )
            if not found:
                continue
            for values in found:
                row = IncidentRow(*values)
                self.rows[row.id] = row
                self.responders[row.id] = {}
            for values in self.conn.query(
                f"SELECT {', '.join(RESPONDER_COLUMNS)} FROM {RESPONDERS} WHERE incident_id IN ({marks(len(chunk))})",
                chunk,
            ):
                r = ResponderRow(*values)
                self.responders.setdefault(r.incident_id, {})[r.phone] = r

    def apply(self, event: IncidentEvent, seq: int) -> None:
        iid = event.incident_id
        self.rows.move_to_end(iid)
        row = self.rows[iid]
        if row is None:
            if isinstance(event, IncidentOpened):
                self._open(event, seq)
            return
        self.dirty_rows.add(iid)
        row.events += 1  # every event of the incident, whether or not it changes a column
        row.updated_seq = seq
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, row, event, ts(event.at))

    def _people(self, row: IncidentRow) -> dict[str, ResponderRow]:
        self.dirty_people.add(row.id)
        return self.responders.get(row.id) or {}

    def _repeated(self, row: IncidentRow, event: CallRepeated, at: float) -> None:
        row.urgency = max(row.urgency, event.urgency)
        row.calls += 1

    def _notified(self, row: IncidentRow, event: RespondersNotified, at: float) -> None:
        self._handed(row, event.phones, at)

    def _handed(self, row: IncidentRow, phones: Iterable[str], at: float) -> None:
        people = self._people(row)
        for phone in phones:
            r = people.get(phone)
            if r is not None and r.notified_at is None:
                r.notified_at = at
        if row.first_notified_at is None:
            row.first_notified_at = at
        if row.status == "raised":
            row.status = "notifying"

    def _delivered(self, row: IncidentRow, event: DeliverySucceeded, at: float) -> None:
        if event.handed_at is not None:
            self._handed(row, [t.phone for t in event.targets], ts(event.handed_at))
        people = self._people(row)
        for target in event.targets:
            r = people.get(target.phone)
            if r is not None and r.delivered_at is None:
                r.delivered_at = at
        if row.first_delivered_at is None:
            row.first_delivered_at = at

    def _failed(self, row: IncidentRow, event: DeliveryFailed, at: float) -> None:
        if event.handed_at is not None:
            self._handed(row, [f.phone for f in event.failures], ts(event.handed_at))
        people = self._people(row)
        for failure in event.failures:
            r = people.get(failure.phone)
            if r is not None and failure.kind != "withdrawn" and r.failed_kind != "permanent":
                r.failed_kind = failure.kind

    def _accepted(self, row: IncidentRow, event: ResponderAccepted, at: float) -> None:
        r = self._people(row).get(event.phone)
        if event.proxy:
            row.proxy_accepts += 1
            by = _actor_name(event.actor) or "?"
            if by not in row.proxy_by.split("、"):
                row.proxy_by = f"{row.proxy_by}、{by}" if row.proxy_by else by
        else:
            row.own_accepts += 1
        if event.neighbour_group:
            row.neighbour_accepts += 1
            came = f"{event.name or event.phone}（{event.neighbour_group}组）"
            if came not in row.neighbours_by.split("、"):
                row.neighbours_by = f"{row.neighbours_by}、{came}" if row.neighbours_by else came
        if r is not None:
            if r.accepted_at is None:
                r.accepted_proxy = int(event.proxy)
                r.accepted_by = _actor_name(event.actor)
            elif not event.proxy and r.accepted_proxy:
                r.accepted_proxy, r.accepted_by = 0, _actor_name(event.actor)
            r.accepted_at = _first(r.accepted_at, at)
            r.declined_at = None
        if row.first_accept_at is None:
            row.first_accept_role = event.role
            row.first_accept_at = at
        column = ROLE_ACCEPT_COLUMNS.get(event.role)
        if column is not None:
            setattr(row, column, _first(getattr(row, column), at))
        if row.status in ("raised", "notifying"):
            row.status = "acknowledged"

    def _declined(self, row: IncidentRow, event: ResponderDeclined, at: float) -> None:
        r = self._people(row).get(event.phone)
        if r is not None:
            r.declined_at = at

    def _arrived(self, row: IncidentRow, event: ResponderArrived, at: float) -> None:
        r = self._people(row).get(event.phone)
        if r is not None:
            r.arrived_at = _first(r.arrived_at, at)
        row.first_arrival_at = _first(row.first_arrival_at, at)
        if row.status not in CLOSED:
            row.status = "on_scene"

    def _covered(self, row: IncidentRow, event: IncidentCovered, at: float) -> None:
        row.covered = 1
        row.covered_at = _first(row.covered_at, at)
        row.cover_kind = event.kind or ("relaxed" if row.relaxed else "full")
        row.covered_by_proxy = int(event.by_proxy)

    def _escalated(self, row: IncidentRow, event: IncidentEscalated, at: float) -> None:
        row.escalation_tier = max(row.escalation_tier, event.tier)

    def _resolved(self, row: IncidentRow, event: IncidentResolved, at: float) -> None:
        row.status, row.category, row.closed_at = "resolved", event.category, at

    def _cancelled(self, row: IncidentRow, event: IncidentCancelled, at: float) -> None:
        row.status, row.cancel_reason, row.closed_at = "cancelled", event.reason, at

    def _open(self, event: IncidentOpened, seq: int) -> None:
        iid = event.incident_id
        raised = ts(event.at)
        self.rows[iid] = IncidentRow(
            id=iid,
            kind="unregistered" if isinstance(event, UnregisteredCall) else "alarm",
            village=event.village,
            grp=event.group,
            line=event.line,
            caller=event.caller.phone,
            caller_name=event.caller.name,
            caller_role=event.caller.role,
            caller_address=event.caller.place.address if event.caller.place else "",
            caller_lat=event.caller.place.lat if event.caller.place else None,
            caller_lon=event.caller.place.lon if event.caller.place else None,
            origin=event.origin or "call",
            opened_by=event.opened_by_name or event.opened_by,
            silent=int(event.silent),
            channel=event.channel,
            status="raised",
            covered=0,
            urgency=1,
            calls=1,
            recipients=len(event.recipients),
            escalation_tier=0,
            category=None,
            cancel_reason=None,
            raised_at=raised,
            ack_deadline_at=raised + event.ack_deadline_s,
            arrival_deadline_s=event.arrival_deadline_s,
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
            relaxed=int(bool(relaxed_of(event))),
        )
        self.dirty_rows.add(iid)
        self.dirty_people.add(iid)
        people = self.responders.setdefault(iid, {})
        for person, recipient in [(p, 1) for p in event.recipients] + [(d, 0) for d in event.duty_desks]:
            if person.phone not in people:
                people[person.phone] = ResponderRow(
                    iid, person.phone, person.name, person.role, recipient, raised, event.village, event.group
                )

    def write(self) -> None:
        rows = [incident_values(r) for iid in self.dirty_rows if (r := self.rows.get(iid)) is not None]
        self.conn.upsert_many(INCIDENTS, INCIDENT_COLUMNS, ("id",), rows)
        responders = [responder_values(r) for iid in self.dirty_people for r in self.responders.get(iid, {}).values()]
        self.conn.upsert_many(RESPONDERS, RESPONDER_COLUMNS, ("incident_id", "phone"), responders)


_HANDLERS: dict[type[IncidentEvent], Callable[[_Batch, IncidentRow, Any, float], None]] = {
    CallRepeated: _Batch._repeated,
    RespondersNotified: _Batch._notified,
    DeliverySucceeded: _Batch._delivered,
    DeliveryFailed: _Batch._failed,
    ResponderAccepted: _Batch._accepted,
    ResponderDeclined: _Batch._declined,
    ResponderArrived: _Batch._arrived,
    IncidentCovered: _Batch._covered,
    IncidentEscalated: _Batch._escalated,
    IncidentResolved: _Batch._resolved,
    IncidentCancelled: _Batch._cancelled,
}
