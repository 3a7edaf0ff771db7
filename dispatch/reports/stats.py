"""Statistics: incidents by category and period, with period-over-period (环比) and year-over-year
(同比) change, as the county reports them.

Invariants:
- an incident is counted in the period of its raise, in its village's time zone, under its
  category when resolved, `cancelled` when cancelled, `drill` when cancelled as a drill, and
  `open` while it is open, `drill` when raised as a drill (whatever became of it); drills are not
  incidents: the totals leave them out;
- periods are whole: every period from the one holding `since` to the one holding `until` is
  listed, with zeros, so tables line up; the last one is `partial` when `until` falls inside it;
- change is `(count - before) / before * 100`, rounded to 0.1, and null when `before` is 0 (a rise
  from nothing has no percentage); `previous` is the period just before, `last_year` the same
  period a year earlier.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, time
from typing import Any

from dispatch.domain.messages import CATEGORY_ZH
from dispatch.events.model import CATEGORIES
from dispatch.projections.incidents import INCIDENTS
from dispatch.projections.sql import Connection
from dispatch.reports.common import Scope, Zones
from dispatch.reports.periods import (
    Period,
    following,
    label,
    labels_between,
    local_iso,
    previous,
    start_of,
    year_before,
)

KINDS: tuple[str, ...] = (*CATEGORIES, "open", "cancelled", "drill")
KIND_ZH = {**CATEGORY_ZH, "open": "处置中", "cancelled": "已取消", "drill": "演练"}
NOT_COUNTED = frozenset({"drill"})


def kind_of(status: str, category: str | None, cancel_reason: str | None, origin: str = "call") -> str:
    """How an incident is counted: its category, `cancelled`, `open`, or `drill` (raised as a drill,
    or a real alarm cancelled as one), whatever became of it."""
    if origin == "drill":
        return "drill"
    if status == "resolved":
        return category or "other"
    if status == "cancelled":
        return "drill" if cancel_reason == "drill" else "cancelled"
    return "open"


def change(count: int, before: int | None) -> float | None:
    if not before:
        return None
    return round((count - before) / before * 100, 1)


def stats(
    conn: Connection, scope: Scope, zones: Zones, *, since: float, until: float, period: Period
) -> dict[str, Any]:
    """Counts for every period between `since` and `until` (and what they are compared with)."""
    shown = labels_between(since, until, zones.default, period)
    wanted = set(shown)
    wanted.update(previous(name, period) for name in shown)
    wanted.update(y for name in shown if (y := year_before(name, period)) is not None)
    earliest = min(start_of(name, period) for name in wanted)
    from_epoch = datetime.combine(earliest, time(), zones.default).timestamp() - 86400
    end_of_last = datetime.combine(start_of(following(shown[-1], period), period), time(), zones.default).timestamp()
    fetch = Scope(
        villages=scope.villages,
        group=scope.group,
        caller=scope.caller,
        since=from_epoch,
        until=until,
        category=None,
        status=None,
    )
    where, params = fetch.where()
    counts: Counter[tuple[str, str]] = Counter()
    for village, raised_at, status, category, reason, origin in conn.query(
        f"SELECT village, raised_at, status, category, cancel_reason, origin FROM {INCIDENTS}{where}", params
    ):
        name = label(raised_at, zones.of(village), period)
        if name in wanted:
            counts[(name, kind_of(status, category, reason, origin))] += 1
    kinds = [k for k in KINDS if scope.category in (None, k)]
    rows = []
    totals = []
    for name in shown:
        before = previous(name, period)
        year = year_before(name, period)
        for kind in kinds:
            count = counts[(name, kind)]
            prev_count = counts[(before, kind)]
            year_count = counts[(year, kind)] if year else None
            rows.append(
                {
                    "period": name,
                    "category": kind,
                    "category_zh": KIND_ZH[kind],
                    "count": count,
                    "previous": prev_count,
                    "change_pct": change(count, prev_count),
                    "last_year": year_count,
                    "yoy_pct": change(count, year_count),
                }
            )
        total = sum(counts[(name, k)] for k in kinds if k not in NOT_COUNTED)
        prev_total = sum(counts[(before, k)] for k in kinds if k not in NOT_COUNTED)
        year_total = sum(counts[(year, k)] for k in kinds if k not in NOT_COUNTED) if year else None
        totals.append(
            {
                "period": name,
                "partial": name == shown[-1] and until < end_of_last,
                "count": total,
                "previous": prev_total,
                "change_pct": change(total, prev_total),
                "last_year": year_total,
                "yoy_pct": change(total, year_total),
            }
        )
    return {
        "villages": sorted(scope.villages) if scope.villages is not None else None,
        "group": scope.group,
        "period": period,
        "since": local_iso(
            datetime.combine(start_of(shown[0], period), time(), zones.default).timestamp(), zones.default
        ),
        "until": local_iso(until, zones.default),
        "time_zone": zones.default_name,
        "categories": kinds,
        "rows": rows,
        "totals": totals,
    }
