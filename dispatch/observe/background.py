"""A background task of the service's event loop, started and stopped with it.

Invariants:
- `start` runs the subclass's `_run` as one named task on the running loop; `stop` cancels it and
  waits until it has ended (a second `stop`, or one before `start`, does nothing);
- what `_run` does is its own: the monitors built on this (gauges, loop lag) never share a task.
"""

from __future__ import annotations

import asyncio
import contextlib


class BackgroundTask:
    """One named task on the running loop; subclasses say what it does in `_run`."""

    task_name = "background"
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError
