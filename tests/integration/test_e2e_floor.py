"""benchmarks/e2e_floor.py, the end-to-end floor: every call is stored, rung at nine, scheduled and recorded."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from common import RECIPIENTS  # noqa: E402
from e2e import run_floor  # noqa: E402


async def test_the_floor_does_per_call_all_the_io_it_stands_for(tmp_path: Path) -> None:
    floor = await run_floor(tmp_path, 20, 1)
    calls = floor.calls
    assert calls == 20 and floor.refused == 0
    assert floor.counts == {
        "calls": calls,
        "webhooks": calls * RECIPIENTS,
        "schedules": calls,
        "outcomes": calls,
        "acks": calls,
        "incidents": calls,
        "alerted": calls * RECIPIENTS,
    }
    assert 0 < floor.p50_ms <= floor.p99_ms
    assert floor.cpu_ms > 0 and floor.nats_cpu_ms > 0
