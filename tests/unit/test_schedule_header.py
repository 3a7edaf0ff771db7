"""The schedule header the server parses: `@at` RFC 3339 in UTC, milliseconds, a Z."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from dispatch.store.timers import at_header


def test_a_local_time_is_written_in_utc_with_milliseconds() -> None:
    due = datetime(2026, 12, 1, 8, 0, 5, 123456, tzinfo=timezone(timedelta(hours=8)))
    assert at_header(due) == "@at 2026-12-01T00:00:05.123Z"


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2999, 1, 1), timezones=st.just(UTC)))
def test_the_header_names_the_due_time_to_the_millisecond(due: datetime) -> None:
    header = at_header(due)
    assert header.startswith("@at ") and header.endswith("Z")
    parsed = datetime.fromisoformat(header[4:-1]).replace(tzinfo=UTC)
    assert parsed == due.replace(microsecond=due.microsecond // 1000 * 1000)
