"""Incident history: the incidents of a village, a group or a caller, newest first.

Invariants:
- rows are exactly the incidents the scope selects (period, status, category, village, group,
  caller), ordered by raise time (newest first, then id), paged by `offset`/`limit`; `total` is the
  number selected before paging, so a reader always knows whether it saw everything;
- times are shown in the incident's village's time zone, as RFC 3339 with the offset;
- durations are seconds from the raise, missing when the step never happened;
- each row says how it was covered (`full` or `relaxed`, by a proxy answer or not), how many
  accepts were the responders' own and how many taken for them, and by whom.
"""

from __future__ import annotations

from typing import Any

from dispatch.domain.messages import CANCEL_ZH, CATEGORY_ZH, STATUS_ZH
from dispatch.projections.incidents import INCIDENTS
from dispatch.projections.sql import Connection
from dispatch.reports.common import Scope, Zones, incident_count, shown_phone
from dispatch.reports.periods import local_iso

COLUMNS = (
    "id",
    "kind",
    "village",
    "grp",
    "caller",
    "caller_name",
    "caller_role",
    "caller_address",
    "caller_lat",
    "caller_lon",
    "origin",
    "opened_by",
    "silent",
    "channel",
    "status",
    "covered",
    "urgency",
    "calls",
    "recipients",
    "escalation_tier",
    "category",
    "cancel_reason",
    "raised_at",
    "first_accept_at",
    "first_accept_role",
    "covered_at",
    "first_arrival_at",
    "closed_at",
    "cover_kind",
    "covered_by_proxy",
    "own_accepts",
    "proxy_accepts",
    "proxy_by",
    "neighbour_accepts",
    "neighbours_by",
)


def _since_raise(row: dict[str, Any], column: str) -> float | None:
    at = row[column]
    return None if at is None else round(at - row["raised_at"], 3)


def history(
    conn: Connection, scope: Scope, zones: Zones, *, limit: int = 100, offset: int = 0, reveal: bool = False
) -> dict[str, Any]:
    where, params = scope.where()
    found = conn.query(
        f"SELECT {', '.join(COLUMNS)} FROM {INCIDENTS}{where} ORDER BY raised_at DESC, id DESC LIMIT ? OFFSET ?",
        (*params, limit, offset),
    )
    rows = []
    for values in found:
        row = dict(zip(COLUMNS, values, strict=True))
        tz = zones.of(row["village"])
        rows.append(
            {
                "incident_id": row["id"],
                "kind": row["kind"],
                "raised_at": local_iso(row["raised_at"], tz),
                "time_zone": zones.name_of(row["village"]),
                "village": row["village"],
                "group": row["grp"],
                "caller": shown_phone(row["caller"], reveal),
                "caller_name": row["caller_name"],
                "caller_role": row["caller_role"],
                "caller_address": row["caller_address"],
                "caller_geo": (
                    f"geo:{row['caller_lat']},{row['caller_lon']}" if row["caller_lat"] is not None else None
                ),
                "channel": row["channel"],
                "origin": row["origin"],
                "opened_by": row["opened_by"] or None,
                "silent": bool(row["silent"]),
                "status": row["status"],
                "status_zh": STATUS_ZH.get(row["status"], row["status"]),
                "category": row["category"],
                "category_zh": CATEGORY_ZH.get(row["category"] or "", None),
                "cancel_reason": row["cancel_reason"],
                "cancel_reason_zh": CANCEL_ZH.get(row["cancel_reason"] or ""),
                "covered": bool(row["covered"]),
                "urgency": row["urgency"],
                "calls": row["calls"],
                "recipients": row["recipients"],
                "escalation_tier": row["escalation_tier"],
                "first_accept_role": row["first_accept_role"],
                "time_to_first_accept": _since_raise(row, "first_accept_at"),
                "time_to_covered": _since_raise(row, "covered_at"),
                "time_to_arrival": _since_raise(row, "first_arrival_at"),
                "closed_at": local_iso(row["closed_at"], tz),
                "cover_kind": row["cover_kind"],
                "covered_by_proxy": bool(row["covered_by_proxy"]),
                "own_accepts": row["own_accepts"],
                "proxy_accepts": row["proxy_accepts"],
                "proxy_by": row["proxy_by"],
                "neighbour_accepts": row["neighbour_accepts"],
                "neighbours_by": row["neighbours_by"],
            }
        )
    total = incident_count(conn, scope) if rows or offset else 0
    return {
        "villages": sorted(scope.villages) if scope.villages is not None else None,
        "group": scope.group,
        "caller": shown_phone(scope.caller, reveal),
        "since": local_iso(scope.since, zones.default),
        "until": local_iso(scope.until, zones.default),
        "status": scope.status,
        "category": scope.category,
        "total": total,
        "offset": offset,
        "count": len(rows),
        "rows": rows,
    }
