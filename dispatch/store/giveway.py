"""Long loops on the service's one event loop give way to everything else (an alarm first of all).

Sealing a county's 100,000 numbers, opening them again, or cutting them into chunks is one loop
that, run in one go, holds the event loop for a second or more: no alarm is decided, handed or
acknowledged meanwhile. `GiveWay` lets such a loop yield once it has held the loop for `budget_s`,
and returns at once otherwise, so a small loop (an alarm's own three events) costs one clock read
per item and never waits.

Invariant: a loop that gives way must not depend on nothing else running between two of its items
(it holds no half-made state that another task reads).
"""

from __future__ import annotations

import asyncio
import time

BUDGET_S = 0.005


class GiveWay:
    """Yields to the event loop once `budget_s` of it has been held since the last yield."""

    __slots__ = ("budget_s", "since", "yields")

    def __init__(self, budget_s: float | None = None) -> None:
        self.budget_s = BUDGET_S if budget_s is None else budget_s
        self.since = time.perf_counter()
        self.yields = 0

    async def turn(self) -> None:
        """Return at once while within the budget; else let every ready callback run first."""
        if time.perf_counter() - self.since < self.budget_s:
            return
        await asyncio.sleep(0)
        self.yields += 1
        self.since = time.perf_counter()
