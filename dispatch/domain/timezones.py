"""Time zones: everything is stored in UTC; people read a village's times in its own zone.

Invariants: a zone name is accepted only if the IANA database (the system's, or the `tzdata`
package where the system has none) knows it; the default is China Standard Time. Every time a
person reads (the CLI, the report tables, the timeline) is written by `human_time`: local time in
the zone, to the second, with the zone's UTC offset (`2026-12-04 14:03:05 +08:00`); the JSON APIs
keep RFC 3339 with an offset. The console writes the same shape (`humanTime` in console.js).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIME_ZONE = "Asia/Shanghai"


def valid_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone this machine knows."""
    if not name or len(name) > 64 or name.startswith("/") or ".." in name:
        return False
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The zone called `name`; raises ZoneInfoNotFoundError (or ValueError) for an unknown one."""
    return ZoneInfo(name)


def human_time(when: datetime | float | str | None, tz: tzinfo | str | None = None) -> str:
    """`2026-12-04 14:03:05 +08:00`: `when` (a datetime, epoch seconds or RFC 3339) in `tz`; `-` if None.

    Without `tz` an aware time keeps its own offset; a naive datetime or string is read as UTC.
    """
    if when is None or when == "":
        return "-"
    if isinstance(when, str):
        moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
    elif isinstance(when, datetime):
        moment = when
    else:
        moment = datetime.fromtimestamp(float(when), UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if tz is not None:
        moment = moment.astimezone(zone(tz) if isinstance(tz, str) else tz)
    minutes = round((moment.utcoffset() or timedelta()).total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{moment:%Y-%m-%d %H:%M:%S} {sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
