"""benchmarks/soak.py's census: what grew between two censuses, per alarm, largest first."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from soak import census_growth


def test_growth_per_alarm_is_listed_largest_first_and_what_shrank_is_left_out() -> None:
    first = {"blocks": 1000, "malloc_in_use": 10_000_000, "malloc_free": 0, "types": {"a.Future": 10, "b.Row": 50}}
    last = {
        "blocks": 3000,
        "malloc_in_use": 12_000_000,
        "malloc_free": 1_000_000,
        "types": {"a.Future": 1010, "b.Row": 40, "c.Bucket": 200},
    }
    lines = census_growth(first, last, 1000)
    assert lines[0].strip() == "pymalloc blocks +2000 (+2.0/alarm)"
    assert "+2.0 MB (+2000 B/alarm)" in lines[1]
    grown = [line.split()[-1] for line in lines[2:]]
    assert grown == ["a.Future", "c.Bucket"], "largest first; b.Row shrank"
    assert "+1.00/alarm" in lines[2]
