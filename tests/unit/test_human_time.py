"""One way to write a time for people: local to the zone, to the second, the zone named by its offset."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch.domain.timezones import human_time, zone
from dispatch.reports import render
from dispatch.reports.periods import local_text

AT = datetime(2026, 12, 4, 6, 3, 5, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("when", "tz", "shown"),
    [
        (AT, "Asia/Shanghai", "2026-12-04 14:03:05 +08:00"),
        (AT.timestamp(), "Asia/Shanghai", "2026-12-04 14:03:05 +08:00"),
        ("2026-12-04T06:03:05.123456Z", "Asia/Shanghai", "2026-12-04 14:03:05 +08:00"),
        ("2026-12-04T14:03:05+08:00", None, "2026-12-04 14:03:05 +08:00"),
        (AT, "UTC", "2026-12-04 06:03:05 +00:00"),
        (AT, "Asia/Kolkata", "2026-12-04 11:33:05 +05:30"),
        (AT, "America/Sao_Paulo", "2026-12-04 03:03:05 -03:00"),
        (AT.replace(tzinfo=None), "Asia/Shanghai", "2026-12-04 14:03:05 +08:00"),
        (None, "Asia/Shanghai", "-"),
    ],
)
def test_human_time(when: object, tz: str | None, shown: str) -> None:
    assert human_time(when, tz) == shown  # type: ignore[arg-type]


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_the_text_reads_back_as_the_same_second(when: datetime) -> None:
    text = human_time(when, "Asia/Shanghai")
    back = datetime.strptime(text, "%Y-%m-%d %H:%M:%S %z")
    assert back == when.replace(microsecond=0)


def test_report_tables_and_periods_write_times_the_same_way() -> None:
    assert render.local_time("2026-11-24T20:00:00+08:00") == "2026-11-24 20:00:00 +08:00"
    assert render.local_time(None) == "-"
    assert local_text(AT.timestamp(), zone("Asia/Shanghai")) == "2026-12-04 14:03:05 +08:00"
