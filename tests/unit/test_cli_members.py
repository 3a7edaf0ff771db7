"""`dispatch members`: the times a person types, and an absence as the CLI prints it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dispatch.cli.members import UsageError, show, when

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_relative_times_count_from_now() -> None:
    assert when("+8h", NOW) == "2026-12-04T20:00:00+00:00"
    assert when("+3d", NOW) == "2026-12-07T12:00:00+00:00"
    assert when("+30m", NOW) == "2026-12-04T12:30:00+00:00"


def test_a_naive_time_is_read_in_the_service_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPATCH_TIME_ZONE", raising=False)
    assert when("2026-12-05 08:00", NOW) == "2026-12-05T00:00:00+00:00"
    assert when("2026-12-05", NOW) == "2026-12-04T16:00:00+00:00"
    assert when("2026-12-05T08:00:00Z", NOW) == "2026-12-05T08:00:00+00:00"


def test_an_unreadable_time_says_what_is_accepted() -> None:
    with pytest.raises(UsageError, match=r"\+8h"):
        when("next tuesday", NOW)


def test_an_absence_without_substitute_says_the_group_is_left_short() -> None:
    view = {
        "phone": "+8613900000009",
        "name": "吴警官",
        "groups": [{"village": "dongshan", "group": "1", "role_zh": "社区民警"}],
        "absence": {
            "absent_now": True,
            "from_text": "2026-12-04 20:00:00 +08:00",
            "until_text": "2026-12-07 20:00:00 +08:00",
            "substitute": None,
            "substitute_name": "",
            "note": "年假",
        },
    }
    text = show(view)
    assert "休假中" in text and "无人替班" in text and "年假" in text
    assert show({**view, "absence": None}).endswith("在岗")
