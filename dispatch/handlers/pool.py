"""A bounded pool of in-flight message handlers.

Invariants: at most `limit` handlers run at once; `submit` waits for a free slot (backpressure
reaches the consumer, which then stops pulling), then runs the handler at once up to its first
wait (no turn of the loop between a message and its handler) and leaves the rest to a task;
`drain` lets the running ones finish. While a handler works on a JetStream message, the pool
tells the server it is in progress every `heartbeat` seconds: consumers can then keep a short ack
wait, so the messages of a process that died come back within seconds, while a slow receiver
does not cause a redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
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

    @property
    def running(self) -> int:
        """How many handlers are running."""
        return len(self._tasks)

    async def submit(self, work: Callable[[], Awaitable[None]], msg: Msg | None = None) -> None:
        """Run `work` in the pool, waiting for a free place."""
        await self._slots.acquire()
        running = start(self._run(work, msg))
        if not running.done():
            self._tasks.add(running)
            running.add_done_callback(self._tasks.discard)

    async def _run(self, work: Callable[[], Awaitable[None]], msg: Msg | None) -> None:
        beat = self._beat_later(msg) if msg is not None else None
        try:
            await work()
        finally:
            if beat is not None:
                beat[0].cancel()
            self._slots.release()

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
        """Wait for the running handlers to finish, up to `timeout`."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _in_progress(msg: Msg) -> None:
    with contextlib.suppress(Exception):
        await msg.in_progress()
