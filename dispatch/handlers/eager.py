"""Start coroutines at once, in the caller's turn of the event loop (Python 3.12's eager tasks, on 3.11).

`start(coro)` runs the coroutine up to its first suspension before returning: one that finishes
without suspending costs no task and no turn of the loop; one that suspends continues in a task
from where it stopped. `gather_now(*coros)` starts each in order and waits for all of them (`settled`: for futures
already started).

Invariants:
- each coroutine runs in a copy of the caller's context (as in a task), so context variables it
  sets never leak into the caller's;
- its first step runs as the task that continues it (`asyncio.current_task()`), as 3.12's eager
  tasks do: `asyncio.timeout` and anything else bound to the current task binds to that task.
  Run as the caller, a timeout entered there cancelled the caller (a consumer's loop: the
  process stopped fanning out) and left the coroutine waiting for ever. The task is made before
  the first step; one whose coroutine finishes there is not what `start` returns and ends at
  its first turn;
- a coroutine that raises or finishes in its first step gives a future already holding its
  exception or result; the rest of one that suspends is a task, cancellable like any other;
- `gather_now` returns results in argument order and raises the first exception, as
  `asyncio.gather` does.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class _Rest:
    """The remainder of a coroutine that suspended on `pending`, as an awaitable for a task."""

    __slots__ = ("coro", "finished", "pending")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.pending: Any = None
        self.finished = False

    def __await__(self) -> Generator[Any, Any, Any]:
        if self.finished:
            return None
        pending, self.pending = self.pending, None
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                self.coro.close()
                raise
            except BaseException as exc:
                try:
                    pending = self.coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = self.coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _finish(rest: _Rest) -> Any:
    return await rest


def start(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run `coro` to its first suspension now; a future of its result."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    rest = _Rest(coro)
    task = loop.create_task(_finish(rest), context=context)
    try:
        pending = _first_step(loop, task, context, coro)
    except StopIteration as stop:
        rest.finished = True
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        rest.finished = True
        raise
    except asyncio.CancelledError:
        rest.finished = True
        cancelled: asyncio.Future[T] = loop.create_future()
        cancelled.cancel()
        return cancelled
    except BaseException as exc:
        rest.finished = True
        failed: asyncio.Future[T] = loop.create_future()
        failed.set_exception(exc)
        return failed
    rest.pending = pending
    return task


def _first_step(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any],
    context: contextvars.Context,
    coro: Coroutine[Any, Any, Any],
) -> Any:
    """`coro.send(None)` in `context`, with `task` as the loop's current task meanwhile."""
    caller = asyncio.current_task(loop)
    if caller is not None:
        _leave_task(loop, caller)
    _enter_task(loop, task)
    try:
        return context.run(coro.send, None)
    finally:
        _leave_task(loop, task)
        if caller is not None:
            _enter_task(loop, caller)


async def gather_now(*coros: Coroutine[Any, Any, T]) -> list[T]:
    """Start every coroutine at once, in order; their results in that order."""
    return await settled([start(coro) for coro in coros])


async def settled(futures: list[asyncio.Future[T]]) -> list[T]:
    """The results of started coroutines, in order, without a turn of the loop when all are done."""
    if all(f.done() for f in futures):
        failures = [f.exception() for f in futures if not f.cancelled()]
        first = next((exc for exc in failures if exc is not None), None)
        if first is not None:
            raise first
        return [f.result() for f in futures]
    return list(await asyncio.gather(*futures))
