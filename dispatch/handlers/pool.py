"""A bounded pool of in-flight message handlers.

Invariant: at most `limit` handlers run at once; `submit` waits for a free slot (backpressure
reaches the consumer, which then stops pulling); `drain` lets the running ones finish.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class TaskPool:
    def __init__(self, limit: int, name: str) -> None:
        self.name = name
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def submit(self, work: Callable[[], Awaitable[None]]) -> None:
        await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(self._run(work), name=self.name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        finally:
            self._slots.release()

    async def drain(self, timeout: float = 10.0) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
