"""New alarms before deadline work: while an alarm is being handled, fewer deadlines are decided at once.

A storm sets many deadlines that fall due together (a typhoon night: every group's leader busy),
and their escalations share the event loop, the log's one write path and the channels with the new
alarms still coming in. An alarm must not wait behind a thousand escalations, and the escalations
must still go on. So deadline work (a fired deadline decided: `EscalationService.on_timer`) takes a
place in `Priority`: up to `wide` at once while no alarm work runs, up to `narrow` while some does
(a call decided, an alarm's or a repeat's fan-out). Deadline work waiting for a place starts in
the order it asked, as places free up.

Invariants:
- deadline work never starts while `narrow` (alarm work running) or `wide` (none) deadlines run; the
  ones running are never interrupted, so the width narrows as they finish;
- alarm work never waits here: it only counts itself in and out;
- `narrow` is at least 1, so deadlines keep being decided during an endless stream of alarms.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

M = TypeVar("M")
R = TypeVar("R")

DEADLINES_WIDE = 128
DEADLINES_NARROW = 48


class Priority:
    """Alarm work in flight narrows how much deadline work runs at once."""

    def __init__(self, *, wide: int = DEADLINES_WIDE, narrow: int = DEADLINES_NARROW) -> None:
        if not 1 <= narrow <= wide:
            raise ValueError("need 1 <= narrow <= wide")
        self.wide = wide
        self.narrow = narrow
        self.alarms = 0
        self.deadlines = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._queued = 0  # the waiting ones not cancelled (counted, not scanned: thousands wait in a storm)

    @property
    def width(self) -> int:
        """How many deadlines may run at once now."""
        return self.narrow if self.alarms else self.wide

    @property
    def waiting(self) -> int:
        """How many deadlines wait for a place."""
        return self._queued

    def alarm_started(self) -> None:
        """Alarm work began: deadlines beyond `narrow` wait until it ends."""
        self.alarms += 1

    def alarm_ended(self) -> None:
        """Alarm work ended."""
        self.alarms -= 1
        self._admit()

    async def run_alarm(self, work: Awaitable[R]) -> R:
        """Run alarm work, counted in while it runs."""
        self.alarm_started()
        try:
            return await work
        finally:
            self.alarm_ended()

    async def run_deadline(self, work: Callable[[], Awaitable[R]]) -> R:
        """Run deadline work once a place is free (see the module docstring)."""
        if self.deadlines < self.width and not self._queued:
            self.deadlines += 1
        else:
            admitted = asyncio.get_running_loop().create_future()
            self._waiting.append(admitted)
            self._queued += 1
            try:
                await admitted  # the place is taken for us when we are admitted
            except asyncio.CancelledError:
                if admitted.done() and not admitted.cancelled():
                    self.deadlines -= 1
                    self._admit()
                else:
                    self._queued -= 1
                raise
        try:
            return await work()
        finally:
            self.deadlines -= 1
            self._admit()

    def _admit(self) -> None:
        while self._waiting and self.deadlines < self.width:
            admitted = self._waiting.popleft()
            if admitted.done():
                continue
            self._queued -= 1
            self.deadlines += 1
            admitted.set_result(None)

    def alarm_handler(self, handler: Callable[[M], Awaitable[R]]) -> Callable[[M], Awaitable[R]]:
        """`handler` as alarm work (same name, for the bus's table)."""

        @functools.wraps(handler)
        async def run(message: M) -> R:
            return await self.run_alarm(handler(message))

        return run

    def alarm_when(
        self, urgent: Callable[[M], bool], handler: Callable[[M], Awaitable[R]]
    ) -> Callable[[M], Awaitable[R]]:
        """`handler` as alarm work for the messages `urgent` picks, plain work for the others."""

        @functools.wraps(handler)
        async def run(message: M) -> R:
            if urgent(message):
                return await self.run_alarm(handler(message))
            return await handler(message)

        return run

    def deadline_handler(self, handler: Callable[[M], Awaitable[R]]) -> Callable[[M], Awaitable[R]]:
        """`handler` as deadline work (same name, for the bus's table)."""

        @functools.wraps(handler)
        async def run(message: M) -> R:
            return await self.run_deadline(functools.partial(handler, message))

        return run
