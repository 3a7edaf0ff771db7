"""Response times: how fast help came, overall and by village, group, officer and period.

Per incident (from the incident read model): raised -> first notified -> first accept (and each
role's first accept) -> covered -> first on scene -> resolved. Aggregated over the incidents the
scope selects: count, p50, p90, p99 of each, and how many breached their deadlines.

Invariants:
- the deadlines are the incident's own (snapshotted when it was raised): the ack deadline is
  breached when the incident was not covered by `raised + ack_deadline` (covered later, closed
  uncovered after it, or still open and uncovered past it); the arrival deadline, which starts at
  cover, is breached when nobody was on scene by `covered + arrival_deadline`;
- an incident is counted once in every row its keys put it in: an incident whose group has two
  officers counts for each officer; the overall figures count it once;
- a period is the calendar day, ISO week or month in the incident's village's time zone;
- drills (raised as drills, or real alarms cancelled as one) are not counted: readiness reports them;
- `time_to_resolve` counts resolved incidents only (a cancellation is not a resolution);
- `covered` splits into `covered_full` (every clause of the cover policy met) and
  `covered_relaxed` (a clause was dropped at raise time: e.g. the leader called and the group has
  no assistant); `covered_by_proxy` counts covers met with an answer taken for someone else;
  `own_accepts` / `proxy_accepts` count accepts the responders recorded themselves / that were
  recorded for them; `neighbour_accepts` those that came from a neighbouring group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from dispatch.projections.incidents import INCIDENTS, RESPONDERS
from dispatch.projections.sql import Connection
from dispatch.reports.common import Scope, Zones, shown_phone, summary
from dispatch.reports.periods import Period, label, local_iso

Dimension = Literal["village", "group", "officer"]
DIMENSIONS: tuple[Dimension, ...] = ("village", "group", "officer")
MEASURES: dict[str, str] = {
    "time_to_first_notified": "first_notified_at",
    "time_to_first_accept": "first_accept_at",
    "time_to_accept_officer": "officer_accept_at",
    "time_to_accept_leader": "leader_accept_at",
    "time_to_accept_assistant": "assistant_accept_at",
    "time_to_accept_duty": "duty_accept_at",
    "time_to_covered": "covered_at",
    "time_to_arrival": "first_arrival_at",
    "time_to_resolve": "closed_at",
}
COLUMNS = (
    "id",
    "village",
    "grp",
    "raised_at",
    "status",
    "covered_at",
    "closed_at",
    "first_arrival_at",
    "ack_deadline_at",
    "arrival_deadline_s",
    "cover_kind",
    "covered_by_proxy",
    "own_accepts",
    "proxy_accepts",
    "neighbour_accepts",
    *dict.fromkeys(MEASURES.values()),
)


def breaches(row: dict[str, Any], now: float) -> tuple[bool, bool]:
    """(ack deadline breached, arrival deadline breached) for one incident row."""
    covered, closed, arrived = row["covered_at"], row["closed_at"], row["first_arrival_at"]
    ack_end = covered if covered is not None else (closed if closed is not None else now)
    ack = ack_end > row["ack_deadline_at"]
    arrival = False
    if covered is not None:
        arrival_end = arrived if arrived is not None else (closed if closed is not None else now)
        arrival = arrival_end > covered + row["arrival_deadline_s"]
    return ack, arrival


class _Tally:
    __slots__ = (
        "ack_breached",
        "arrival_breached",
        "covered",
        "covered_by_proxy",
        "covered_relaxed",
        "incidents",
        "neighbour_accepts",
        "own_accepts",
        "proxy_accepts",
        "values",
    )

    def __init__(self) -> None:
        self.incidents = 0
        self.covered = 0
        self.covered_relaxed = 0
        self.covered_by_proxy = 0
        self.own_accepts = 0
        self.proxy_accepts = 0
        self.neighbour_accepts = 0
        self.ack_breached = 0
        self.arrival_breached = 0
        self.values: dict[str, list[float]] = {name: [] for name in MEASURES}

    def add(self, row: dict[str, Any], ack: bool, arrival: bool) -> None:
        self.incidents += 1
        self.covered += row["covered_at"] is not None
        self.covered_relaxed += row["covered_at"] is not None and row["cover_kind"] == "relaxed"
        self.covered_by_proxy += row["covered_at"] is not None and bool(row["covered_by_proxy"])
        self.own_accepts += row["own_accepts"]
        self.proxy_accepts += row["proxy_accepts"]
        self.neighbour_accepts += row["neighbour_accepts"]
        self.ack_breached += ack
        self.arrival_breached += arrival
        raised = row["raised_at"]
        for name, column in MEASURES.items():
            at = row[column]
            if at is None or (name == "time_to_resolve" and row["status"] != "resolved"):
                continue
            self.values[name].append(at - raised)

    def view(self) -> dict[str, Any]:
        return {
            "incidents": self.incidents,
            "covered": self.covered,
            "covered_full": self.covered - self.covered_relaxed,
            "covered_relaxed": self.covered_relaxed,
            "covered_by_proxy": self.covered_by_proxy,
            "own_accepts": self.own_accepts,
            "proxy_accepts": self.proxy_accepts,
            "neighbour_accepts": self.neighbour_accepts,
            "ack_breached": self.ack_breached,
            "arrival_breached": self.arrival_breached,
            "measures": {name: summary(values) for name, values in self.values.items()},
        }


def response_times(
    conn: Connection,
    scope: Scope,
    zones: Zones,
    *,
    now: float,
    by: Sequence[Dimension] = (),
    period: Period | None = None,
    reveal: bool = False,
) -> dict[str, Any]:
    """The report as JSON-able data: overall figures, and `rows` keyed by `by` and `period`; drills
    are left out (they are reported on their own in readiness)."""
    scope = replace(scope, drills=False)
    where, params = scope.where()
    rows = [
        dict(zip(COLUMNS, r, strict=True))
        for r in conn.query(f"SELECT {', '.join(COLUMNS)} FROM {INCIDENTS}{where}", params)
    ]
    officers: dict[str, list[tuple[str | None, str | None]]] = defaultdict(list)
    if "officer" in by:
        where_i, params_i = scope.where("i")
        joiner = " AND " if where_i else " WHERE "
        for incident_id, phone, name in conn.query(
            f"SELECT r.incident_id, r.phone, r.name FROM {RESPONDERS} r JOIN {INCIDENTS} i ON i.id = r.incident_id"
            f"{where_i}{joiner}r.role = 'officer' AND r.recipient = 1",
            params_i,
        ):
            officers[incident_id].append((phone, name))
    overall = _Tally()
    groups: dict[tuple[Any, ...], _Tally] = defaultdict(_Tally)
    for row in rows:
        ack, arrival = breaches(row, now)
        overall.add(row, ack, arrival)
        if not by and period is None:
            continue
        base: list[Any] = []
        for dim in by:
            if dim == "village":
                base.append(row["village"])
            elif dim == "group":
                base.append((row["village"], row["grp"]))
        when = (label(row["raised_at"], zones.of(row["village"]), period),) if period else ()
        if "officer" in by:
            for officer in officers.get(row["id"]) or [(None, None)]:
                groups[(*base, officer, *when)].add(row, ack, arrival)
        else:
            groups[(*base, *when)].add(row, ack, arrival)
    out_rows = []
    for key in sorted(groups, key=_sort_key):
        item: dict[str, Any] = {}
        parts = list(key)
        for dim in by:
            if dim == "village":
                item["village"] = parts.pop(0)
            elif dim == "group":
                village, grp = parts.pop(0)
                item["village"], item["group"] = village, grp
            else:
                phone, name = parts.pop(0)
                item["officer"] = {"phone": shown_phone(phone, reveal), "name": name}
        if period:
            item["period"] = parts.pop(0)
        item.update(groups[key].view())
        out_rows.append(item)
    return {
        "villages": sorted(scope.villages) if scope.villages is not None else None,
        "group": scope.group,
        "since": local_iso(scope.since, zones.default),
        "until": local_iso(scope.until, zones.default),
        "by": list(by),
        "period": period,
        "time_zone": zones.names([r["village"] for r in rows]) if rows else [zones.default_name],
        **overall.view(),
        "rows": out_rows,
    }


def _sort_key(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(part) if part is not None else "" for part in key)
