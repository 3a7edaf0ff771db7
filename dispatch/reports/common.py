"""What every report shares: the filter (scope), village time zones, phone masking, percentiles.

Invariants:
- `Scope.villages` None means every village, an empty set means none (a token that sees nothing);
  reports never widen a scope, they only narrow it with their own filters;
- a phone number leaves a report whole only when `reveal` is true (an admin token); otherwise it is
  masked (`+86138****5678`) in every format;
- percentiles interpolate linearly between ranks (p50 of [1, 2, 3, 4] is 2.5); a measure nobody
  reached is counted as missing, never as zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from dispatch.domain.phone import mask
from dispatch.domain.timezones import DEFAULT_TIME_ZONE, valid_time_zone, zone
from dispatch.projections.incidents import INCIDENTS
from dispatch.projections.roster import VILLAGES
from dispatch.projections.sql import Connection, marks

STATUSES = ("open", "raised", "notifying", "acknowledged", "on_scene", "resolved", "cancelled")


@dataclass(frozen=True, slots=True)
class Scope:
    villages: frozenset[str] | None = None
    group: str | None = None
    caller: str | None = None
    since: float | None = None
    until: float | None = None
    status: str | None = None
    category: str | None = None
    # False: leave drills out (raised as drills, or real alarms cancelled as one)
    drills: bool = True

    def where(self, alias: str = "") -> tuple[str, list[Any]]:
        """SQL conditions over the incidents table (prefixed `alias.` when given) and their parameters."""
        p = f"{alias}." if alias else ""
        clauses: list[str] = []
        params: list[Any] = []
        if self.villages is not None:
            if not self.villages:
                clauses.append("1 = 0")
            else:
                clauses.append(f"{p}village IN ({marks(len(self.villages))})")
                params.extend(sorted(self.villages))
        if self.group is not None:
            clauses.append(f"{p}grp = ?")
            params.append(self.group)
        if self.caller is not None:
            clauses.append(f"{p}caller = ?")
            params.append(self.caller)
        if self.since is not None:
            clauses.append(f"{p}raised_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{p}raised_at < ?")
            params.append(self.until)
        if self.status == "open":
            clauses.append(f"{p}status NOT IN ('resolved', 'cancelled')")
        elif self.status:
            clauses.append(f"{p}status = ?")
            params.append(self.status)
        if self.category:
            clauses.append(f"{p}category = ?")
            params.append(self.category)
        if not self.drills:
            clauses.append(f"{p}origin <> 'drill' AND ({p}cancel_reason IS NULL OR {p}cancel_reason <> 'drill')")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


@dataclass(slots=True)
class Zones:
    """Each village's time zone (its setting, else the service default)."""

    default_name: str = DEFAULT_TIME_ZONE
    by_village: dict[str, str] = field(default_factory=dict)

    @property
    def default(self) -> ZoneInfo:
        return zone(self.default_name)

    def name_of(self, village: str | None) -> str:
        return self.by_village.get(village or "", self.default_name)

    def of(self, village: str | None) -> ZoneInfo:
        return zone(self.name_of(village))

    def names(self, villages: list[str | None]) -> list[str]:
        return sorted({self.name_of(v) for v in villages}) or [self.default_name]


def load_zones(conn: Connection, default_name: str = DEFAULT_TIME_ZONE) -> Zones:
    rows = conn.query(f"SELECT village, time_zone FROM {VILLAGES} WHERE time_zone IS NOT NULL")
    return Zones(default_name, {str(v): str(tz) for v, tz in rows if valid_time_zone(str(tz))})


def shown_phone(phone: str | None, reveal: bool) -> str | None:
    if phone is None:
        return None
    return phone if reveal else mask(phone)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 3)


def summary(values: list[float]) -> dict[str, float | int | None]:
    return {
        "count": len(values),
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
    }


def incident_count(conn: Connection, scope: Scope) -> int:
    where, params = scope.where()
    row = conn.one(f"SELECT COUNT(*) FROM {INCIDENTS}{where}", params)
    return int(row[0]) if row else 0
