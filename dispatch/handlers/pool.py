"""A bounded pool of in-flight message handlers.

Invariants: at most `limit` handlers run at once; `submit` waits for a free slot (backpressure
reaches the consumer, which then stops pulling), then runs the handler at once up to its first
wait (no turn of the loop between a message and its handler) and leaves the rest to a task;
`offer` never waits: urgent work runs at once, beyond the limit when every slot is taken (an
alarm never waits for a place), other work runs now when a slot is free, else is queued in the
order offered and starts in the slot the next finished handler leaves;
`drain` lets the running ones finish and drops the queued ones unacknowledged (the server hands
them over again). While a handler works on a JetStream message, or waits in the queue, the pool
tells the server it is in progress every `heartbeat` seconds: consumers can then keep a short ack
wait, so the messages of a process that died come back within seconds, while a slow receiver
does not cause a redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from dispatch.handlers.eager import start


class TaskPool:
    """At most `size` message handlers at once; in-progress acks while they run."""

    def __init__(self, limit: int, name: str, *, heartbeat: float = 2.0) -> None:
        self.name = name
        self.heartbeat = heartbeat
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Future[None]] = set()
        self._beats: set[asyncio.Task[None]] = set()
        self._queued: deque[_Queued] = deque()

    @property
    def running(self) -> int:
        """How many handlers are running."""
        return len(self._tasks)

    @property
    def queued(self) -> int:
        """How many offered handlers wait for a place."""
        return len(self._queued)

    async def submit(self, work: Callable[[], Awaitable[None]], msg: Msg | None = None) -> None:
        """Run `work` in the pool, waiting for a free place."""
        await self._slots.acquire()
        self._start(work, msg, None)

    async def offer(self, work: Callable[[], Awaitable[None]], msg: Msg | None = None, *, urgent: bool = False) -> None:
        """Run `work` now (urgent work even with every place taken), else queue it; never waits."""
        if not self._slots.locked() and not self._queued:
            await self._slots.acquire()  # a place is free: returns without a turn of the loop
            self._start(work, msg, None)
        elif urgent:
            self._start(work, msg, None, counted=False)
        else:
            self._queued.append(_Queued(work, msg, self._beat_later(msg) if msg is not None else None))

    def _start(
        self,
        work: Callable[[], Awaitable[None]],
        msg: Msg | None,
        beat: list[asyncio.TimerHandle] | None,
        *,
        counted: bool = True,
    ) -> None:
        running = start(self._run(work, msg, beat, counted))
        if not running.done():
            self._tasks.add(running)
            running.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        work: Callable[[], Awaitable[None]],
        msg: Msg | None,
        beat: list[asyncio.TimerHandle] | None,
        counted: bool,
    ) -> None:
        if beat is None and msg is not None:
            beat = self._beat_later(msg)
        try:
            await work()
        finally:
            if beat is not None:
                beat[0].cancel()
            if counted:
                self._hand_over()

    def _hand_over(self) -> None:
        """The place a handler left goes to the next queued one, if any."""
        if not self._queued:
            self._slots.release()
            return
        queued = self._queued.popleft()
        # its own turn of the loop: started here, a chain of handlers that finish without waiting
        # would nest one inside the other
        asyncio.get_running_loop().call_soon(self._start, queued.work, queued.msg, queued.beat)

    def _beat_later(self, msg: Msg) -> list[asyncio.TimerHandle]:
        """A timer (not a task: most handlers finish long before it) that tells the server the
        message is in progress every `heartbeat` seconds; the list holds the pending handle."""
        loop = asyncio.get_running_loop()
        pending: list[asyncio.TimerHandle] = []

        def beat() -> None:
            sending = loop.create_task(_in_progress(msg))
            self._beats.add(sending)
            sending.add_done_callback(self._beats.discard)
            pending[0] = loop.call_later(self.heartbeat, beat)

        pending.append(loop.call_later(self.heartbeat, beat))
        return pending

    async def drain(self, timeout: float = 10.0) -> None:
        """Drop the queued handlers (their messages come back), wait for the running ones, up to `timeout`."""
        for queued in self._queued:
            if queued.beat is not None:
                queued.beat[0].cancel()
        self._queued.clear()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class _Queued:
    """An offered handler waiting for a place, and its message's in-progress timer."""

    __slots__ = ("beat", "msg", "work")

    def __init__(
        self, work: Callable[[], Awaitable[None]], msg: Msg | None, beat: list[asyncio.TimerHandle] | None
    ) -> None:
        self.work = work
        self.msg = msg
        self.beat = beat


async def _in_progress(msg: Msg) -> None:
    with contextlib.suppress(Exception):
        await msg.in_progress()
