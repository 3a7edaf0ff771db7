"""Eager starts: a coroutine runs up to its first suspension in the caller's turn, in its own context."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from dispatch.handlers.eager import gather_now, settled, start

seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="caller")


async def test_a_coroutine_that_never_suspends_is_done_when_start_returns() -> None:
    ran: list[str] = []

    async def quick() -> int:
        ran.append("quick")
        return 7

    future = start(quick())
    assert ran == ["quick"]
    assert future.done()
    assert not isinstance(future, asyncio.Task)
    assert await future == 7


async def test_a_suspended_coroutine_continues_in_a_task_from_where_it_stopped() -> None:
    steps: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def slow() -> str:
        steps.append("before")
        value = await gate
        steps.append(f"after {value}")
        await asyncio.sleep(0)
        steps.append("end")
        return "done"

    future = start(slow())
    assert steps == ["before"]
    assert isinstance(future, asyncio.Task)
    gate.set_result("opened")
    assert await future == "done"
    assert steps == ["before", "after opened", "end"]


async def test_coroutines_start_in_order_before_any_of_them_finishes() -> None:
    started: list[int] = []
    gate = asyncio.Event()

    async def ring(i: int) -> int:
        started.append(i)
        await gate.wait()
        return i * 10

    results = asyncio.ensure_future(gather_now(*(ring(i) for i in range(5))))
    await asyncio.sleep(0)
    assert started == [0, 1, 2, 3, 4]
    gate.set()
    assert await results == [0, 10, 20, 30, 40]


async def test_an_exception_in_the_first_step_or_later_reaches_the_awaiter() -> None:
    async def fails_now() -> None:
        raise ValueError("now")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    with pytest.raises(ValueError, match="now"):
        await start(fails_now())
    with pytest.raises(KeyError, match="later"):
        await start(fails_later())
    with pytest.raises(ValueError, match="now"):
        await gather_now(fails_now(), fails_now())


async def test_cancelling_the_rest_throws_into_the_coroutine() -> None:
    cleaned: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.append("finally")

    future = start(waits())
    await asyncio.sleep(0)
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    assert cleaned == ["finally"]


async def test_context_variables_set_by_the_coroutine_stay_its_own() -> None:
    async def sets(value: str, suspend: bool) -> str:
        seen.set(value)
        if suspend:
            await asyncio.sleep(0)
        return seen.get()

    assert await gather_now(sets("first", False), sets("second", True)) == ["first", "second"]
    assert seen.get() == "caller"


async def test_settled_without_futures_is_empty() -> None:
    assert await settled([]) == []


async def test_a_timeout_inside_a_started_coroutine_times_out_that_coroutine_never_its_caller() -> None:
    """`asyncio.timeout` cancels the task current when it was entered: in a first step run in the
    caller's turn, that must be the task that goes on with the coroutine, or the timeout would
    cancel the caller (a subscription's loop) and leave the coroutine waiting for ever."""
    never = asyncio.get_running_loop().create_future()
    started: list[asyncio.Future[None]] = []
    current: list[asyncio.Task[object] | None] = []

    async def send() -> None:
        current.append(asyncio.current_task())
        async with asyncio.timeout(0.05):
            await never

    async def consumer() -> str:
        started.append(start(send()))
        await asyncio.sleep(0.3)
        return "still consuming"

    assert await asyncio.wait_for(asyncio.ensure_future(consumer()), 5) == "still consuming"
    assert current == [started[0]], "the first step runs as the task that continues it"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(started[0], 5)
