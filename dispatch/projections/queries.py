"""Queries over the incident read model for the API's incident list and the service's gauges
(reports live in `dispatch.reports`).

Invariants: `villages` None means every village, an empty set none; times are UTC ISO 8601;
a list shows callers' numbers masked unless asked to `reveal` them (a list is not an export).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dispatch.domain.phone import mask
from dispatch.projections.incidents import INCIDENTS
from dispatch.projections.sql import Connection

LIST_COLUMNS = (
    "id",
    "kind",
    "village",
    "grp",
    "caller",
    "caller_name",
    "caller_role",
    "channel",
    "status",
    "covered",
    "urgency",
    "recipients",
    "escalation_tier",
    "category",
    "cancel_reason",
    "raised_at",
    "first_accept_at",
    "covered_at",
    "first_arrival_at",
    "closed_at",
)


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _where(villages: frozenset[str] | None, since: datetime | None, status: str | None = None) -> tuple[str, list[Any]]:
    """`villages` None: every village; empty: none at all (a scope that sees nothing)."""
    clauses: list[str] = []
    params: list[Any] = []
    if villages is not None:
        if not villages:
            clauses.append("1 = 0")
        else:
            clauses.append(f"village IN ({', '.join('?' for _ in villages)})")
            params.extend(sorted(villages))
    if since:
        clauses.append("raised_at >= ?")
        params.append(since.timestamp())
    if status == "open":
        clauses.append("status NOT IN ('resolved', 'cancelled')")
    elif status:
        clauses.append("status = ?")
        params.append(status)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def list_incidents(
    conn: Connection,
    *,
    villages: frozenset[str] | None = None,
    status: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    reveal: bool = False,
) -> list[dict[str, Any]]:
    """Incidents newest first, within `villages`; callers masked unless `reveal`."""
    where, params = _where(villages, since, status)
    rows = conn.query(
        f"SELECT {', '.join(LIST_COLUMNS)} FROM {INCIDENTS}{where} ORDER BY raised_at DESC LIMIT ?",
        (*params, limit),
    )
    out = []
    for row in rows:
        item = dict(zip(LIST_COLUMNS, row, strict=True))
        item["incident_id"] = item.pop("id")
        item["group"] = item.pop("grp")
        item["covered"] = bool(item["covered"])
        if not reveal and item["caller"]:
            item["caller"] = mask(item["caller"])
        for key in ("raised_at", "first_accept_at", "covered_at", "first_arrival_at", "closed_at"):
            item[key] = iso(item[key])
        out.append(item)
    return out


def open_incident_count(conn: Connection) -> int:
    row = conn.one(f"SELECT COUNT(*) FROM {INCIDENTS} WHERE status NOT IN ('resolved', 'cancelled')")
    return int(row[0]) if row else 0


def uncovered_counts(conn: Connection, now: float) -> tuple[int, int]:
    """(open incidents not covered, those of them past their ack deadline)."""
    row = conn.one(
        f"SELECT COUNT(*), SUM(CASE WHEN ack_deadline_at < ? THEN 1 ELSE 0 END) FROM {INCIDENTS} "
        "WHERE status NOT IN ('resolved', 'cancelled') AND covered = 0",
        (now,),
    )
    return (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)
