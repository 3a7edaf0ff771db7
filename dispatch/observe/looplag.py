"""Event-loop lag: how late the service's event loop wakes a task that asked to sleep.

Invariants:
- every `every` seconds a task sleeps and observes, in `dispatch_event_loop_lag_seconds`, how much
  later than asked it woke (never negative): a callback that blocks the loop (a synchronous
  read, a long decode) or a backlog of ready callbacks shows here, while every handler's own
  histogram only sees its own share;
- the monitor does nothing else, holds nothing, and stops with the service.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Histogram

from dispatch.observe.background import BackgroundTask

SAMPLE_EVERY_S = 0.5


class LoopLagMonitor(BackgroundTask):
    """Samples the running event loop's wake-up lag into a histogram."""

    task_name = "loop-lag"

    def __init__(self, histogram: Histogram, every: float = SAMPLE_EVERY_S) -> None:
        self.histogram = histogram
        self.every = every

    async def _run(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self.every)
            self.histogram.observe(max(0.0, time.perf_counter() - asked - self.every))
