"""benchmarks/floor.py, the deadline storm's floor: every escalation rings its three targets once."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from deadlines import TIER1_TARGETS, run_floor  # noqa: E402


async def test_the_floor_rings_every_escalation_at_its_three_targets_once(tmp_path: Path) -> None:
    floor = await run_floor(tmp_path, 20)
    assert floor.late.missing == 0
    assert floor.webhooks == floor.keys == 20 * TIER1_TARGETS
    assert 0 <= floor.late.p50 <= floor.late.p99 <= floor.late.max < 30
