"""A caller who keeps calling: repeats merge into the open incident, and a flood is absorbed.

Every call from a caller is admitted while the caller has budget (`REPEATS_AT_ONCE` calls at once,
then one per `REPEAT_EVERY_S`): it is routed as usual, so a repeat raises the urgency and re-alerts
who has not answered (at most every 30 s, by the incident's own rule). Past the budget, a call whose
caller's last incident is still open is *absorbed*: answered `merged` with that incident, counted in
`dispatch_calls_total{status="absorbed"}`, and nothing is appended, so a robot dialing 100 times a
second cannot grow an incident's history (each repeat makes every later load longer) or the log.

Invariants:
- a first call, or any call while the caller has budget, is never absorbed: it is routed;
- a call is absorbed only into an incident whose last decision is not a close (read with one direct
  get), so a new emergency after the last one was resolved or cancelled opens a new incident;
- memory is bounded (`max_callers`, least recently seen forgotten first: forgetting only restores a
  full budget).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from dispatch.domain.ratelimit import RateLimiter

REPEATS_AT_ONCE = 5
REPEAT_EVERY_S = 10.0


class CallerFlood:
    """Per caller: a call budget and the incident their last call went to."""

    def __init__(
        self,
        *,
        at_once: int = REPEATS_AT_ONCE,
        every_s: float = REPEAT_EVERY_S,
        max_callers: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = RateLimiter(1 / every_s, at_once, max_keys=max_callers)
        self.max_callers = max_callers
        self.monotonic = monotonic
        self._last: OrderedDict[str, str] = OrderedDict()
        self.absorbed: dict[str, int] = {}

    def admit(self, caller: str) -> str | None:
        """None when the call must be routed; else the incident it may be absorbed into (if still open)."""
        if self.limiter.take(caller, self.monotonic()) == 0.0:
            return None
        return self._last.get(caller)

    def routed(self, caller: str, incident_id: str) -> None:
        """Remember the incident a call of `caller` was routed to."""
        self._last[caller] = incident_id
        self._last.move_to_end(caller)
        while len(self._last) > self.max_callers:
            self._last.popitem(last=False)
        self.absorbed.pop(caller, None)

    def count_absorbed(self, caller: str) -> int:
        """Count one absorbed call; return how many in a row for this caller."""
        count = self.absorbed[caller] = self.absorbed.get(caller, 0) + 1
        if len(self.absorbed) > self.max_callers:
            self.absorbed.pop(next(iter(self.absorbed)))
        return count
