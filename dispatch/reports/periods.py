"""Calendar periods in a village's time zone: what "this day", "this week", "this month" mean.

Invariants:
- times are stored as UTC epoch seconds; a period is a label of local calendar time in the zone
  of the village the incident belongs to (`2026-11-24`, `2026-W48` ISO week, `2026-11`);
- `previous(label)` is the period just before; `year_before(label)` the same period a year earlier
  (29 February falls back to the 28th; ISO week 53 of a year without one has no counterpart);
- `parse_when` reads RFC 3339 (offset honoured), a naive date-time or a bare date (both read in the
  given zone): `--since 2026-11-01` means local midnight, not UTC midnight; a time outside
  [EARLIEST, LATEST) is refused, so every period and label computed from it stays in range.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from dispatch.domain.timezones import human_time

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")


EARLIEST = datetime(1900, 1, 1, tzinfo=UTC).timestamp()
LATEST = datetime(9000, 1, 1, tzinfo=UTC).timestamp()


class BadTime(ValueError):
    """A filter's time that cannot be read, or lies outside the range reports can show."""


def local(epoch: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).astimezone(tz)


def local_iso(epoch: float | None, tz: ZoneInfo) -> str | None:
    """RFC 3339 in the zone, to the second: `2026-11-24T20:00:00+08:00`."""
    if epoch is None:
        return None
    return local(epoch, tz).replace(microsecond=0).isoformat()


def local_text(epoch: float | None, tz: ZoneInfo) -> str:
    """For people: `2026-11-24 20:00:00 +08:00` (`timezones.human_time`)."""
    return human_time(epoch, tz)


def parse_when(text: str, tz: ZoneInfo) -> float:
    """Epoch seconds of an RFC 3339 time, a naive date-time or a date (the latter two in `tz`)."""
    raw = text.strip()
    if not raw:
        raise BadTime("empty time")
    try:
        if len(raw) == 10:
            parsed = datetime.combine(date.fromisoformat(raw), time())
        else:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise BadTime(f"{text!r} is not a date (2026-11-01) or an RFC 3339 time (2026-11-01T08:00:00+08:00)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    try:
        epoch = parsed.timestamp()
    except (ValueError, OverflowError):
        epoch = EARLIEST - 1 if parsed.year < 1900 else LATEST
    if not EARLIEST <= epoch < LATEST:
        raise BadTime(f"{text!r} is out of range: give a time from 1900-01-02 to 8999-12-31")
    return epoch


def label(epoch: float, tz: ZoneInfo, period: Period) -> str:
    return label_of(local(epoch, tz).date(), period)


def label_of(day: date, period: Period) -> str:
    if period == "day":
        return day.isoformat()
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{day.year}-{day.month:02d}"


def start_of(name: str, period: Period) -> date:
    """The first local day of the period called `name`."""
    if period == "day":
        return date.fromisoformat(name)
    if period == "week":
        year, _, week = name.partition("-W")
        return date.fromisocalendar(int(year), int(week), 1)
    year, _, month = name.partition("-")
    return date(int(year), int(month), 1)


def previous(name: str, period: Period) -> str:
    first = start_of(name, period)
    if period == "day":
        return label_of(first - timedelta(days=1), period)
    if period == "week":
        return label_of(first - timedelta(days=7), period)
    return label_of((first - timedelta(days=1)).replace(day=1), period)


def following(name: str, period: Period) -> str:
    first = start_of(name, period)
    if period == "day":
        return label_of(first + timedelta(days=1), period)
    if period == "week":
        return label_of(first + timedelta(days=7), period)
    return label_of((first + timedelta(days=32)).replace(day=1), period)


def year_before(name: str, period: Period) -> str | None:
    first = start_of(name, period)
    if period == "day":
        try:
            return label_of(first.replace(year=first.year - 1), period)
        except ValueError:
            return label_of(first.replace(year=first.year - 1, day=28), period)
    if period == "week":
        year, week, _ = first.isocalendar()
        try:
            return label_of(date.fromisocalendar(year - 1, week, 1), period)
        except ValueError:
            return None
    return f"{first.year - 1}-{first.month:02d}"


def labels_between(since: float, until: float, tz: ZoneInfo, period: Period, *, limit: int = 1000) -> list[str]:
    """Every period from the one holding `since` to the one holding the last instant before `until`."""
    first, last = label(since, tz, period), label(max(since, until - 0.001), tz, period)
    out = [first]
    while out[-1] != last and len(out) < limit:
        out.append(following(out[-1], period))
    return out


def periods_back(count: int, now: float, tz: ZoneInfo, period: Period) -> float:
    """Epoch of the start of the period `count - 1` before the one holding `now` (a default `since`)."""
    name = label(now, tz, period)
    for _ in range(max(0, count - 1)):
        name = previous(name, period)
    return datetime.combine(start_of(name, period), time(), tz).timestamp()
