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
import contextlib
import time

from prometheus_client import Histogram

SAMPLE_EVERY_S = 0.5


class LoopLagMonitor:
    """Samples the running event loop's wake-up lag into a histogram."""

    def __init__(self, histogram: Histogram, every: float = SAMPLE_EVERY_S) -> None:
        self.histogram = histogram
        self.every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self.every)
            self.histogram.observe(max(0.0, time.perf_counter() - asked - self.every))
