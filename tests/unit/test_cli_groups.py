"""`dispatch groups import`'s output: the progress of an import as replay draws its own, and the
difference one person a line."""

from __future__ import annotations

import io
from typing import Any

from dispatch.cli.groups import LISTED, _draw, print_difference
from dispatch.projections.rebuild import Progress


def status(state: str, **counts: int) -> dict[str, Any]:
    base = {"bytes_total": 1000, "bytes_read": 0, "rows_parsed": 0, "groups_in_file": 0}
    base |= {"changes_total": 0, "changes_written": 0, "events_total": 0, "events_written": 0}
    return {"state": state, **base, **counts}


def test_an_import_draws_reading_then_writing_as_a_bar_or_lines() -> None:
    out = io.StringIO()
    bar = Progress(out, tty=True)
    _draw(bar, status("reading", bytes_read=250, rows_parsed=12_000))
    _draw(bar, status("writing", changes_total=200, changes_written=50, events_total=2200, events_written=550))
    text = out.getvalue()
    assert text.count("\r") == 2 and " 25.0%  reading: 12,000 rows" in text
    assert "writing: 50/200 groups and villages, 550/2,200 events" in text

    out = io.StringIO()
    _draw(Progress(out, tty=False, every=0), status("planning", rows_parsed=9, groups_in_file=1))
    assert out.getvalue() == "roster: 100.0% planning: 9 rows, 1 groups\n"


def test_the_difference_prints_unbound_first_and_cuts_long_lists() -> None:
    member = {"village": "v", "group": "1", "phone": "+8613800000001", "name": "甲", "role": "household"}
    diff = {
        "formed": [],
        "bound": [member] * (LISTED + 5),
        "unbound": [{**member, "name": "乙"}],
        "moved": [{**member, "group": "2", "was": "v/1"}],
        "renamed": [],
        "roles": [],
        "duty_desks_bound": [],
        "duty_desks_unbound": [{"village": "v", "phone": "+8673100000000", "name": "值班室", "role": "duty"}],
        "counts": {"bound": LISTED + 105, "unbound": 1, "moved": 1, "duty_desks_unbound": 1},
    }
    out = io.StringIO()
    print_difference(diff, out)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["unbound (no longer rung for their group) (1):", "  v/1  乙  +8613800000001  household"]
    assert "  v duty desk  值班室  +8673100000000  duty" in lines
    assert "  v/1 -> v/2  甲  +8613800000001  household" in lines
    assert f"bound ({LISTED + 105}):" in lines and lines[-1] == "  ... and 105 more"


def test_the_difference_prints_each_new_language_with_the_old_one() -> None:
    member = {"village": "v", "group": "1", "phone": "+8613800000001", "name": "甲", "role": "household"}
    diff = {"languages": [{**member, "language": "yue"}, {**member, "name": "乙", "was": "yue"}]}
    out = io.StringIO()
    print_difference(diff, out)
    assert out.getvalue().splitlines() == [
        "new language of the voice alarm (2):",
        "  v/1  甲  +8613800000001  household  speaks yue 粤语",
        "  v/1  乙  +8613800000001  household  speaks zh 普通话  (was yue 粤语)",
    ]
