"""Priority: alarm work narrows how many deadlines run at once; shown by who started, in what order."""

from __future__ import annotations

import asyncio

import pytest

from dispatch.handlers.priority import Priority


async def settle(check: object, rounds: int = 200) -> None:
    """Turns of the loop until `check()` holds (a positive marker), at most `rounds`."""
    for _ in range(rounds):
        if callable(check) and check():
            return
        await asyncio.sleep(0)
    raise AssertionError("never reached")


async def test_while_an_alarm_is_handled_only_narrow_deadlines_start_and_the_rest_follow_it() -> None:
    priority = Priority(wide=8, narrow=2)
    started: list[str] = []
    release = asyncio.Event()
    alarm_done = asyncio.Event()

    async def deadline(n: int) -> None:
        started.append(f"deadline {n}")
        await release.wait()

    async def alarm() -> None:
        started.append("alarm")
        await alarm_done.wait()

    ringing = asyncio.ensure_future(priority.run_alarm(alarm()))
    await settle(lambda: started == ["alarm"])
    running = [asyncio.ensure_future(priority.run_deadline(lambda n=n: deadline(n))) for n in range(10)]
    await settle(lambda: priority.waiting == 8)
    assert started == ["alarm", "deadline 0", "deadline 1"]
    assert (priority.deadlines, priority.width) == (2, 2)

    alarm_done.set()
    await ringing
    await settle(lambda: len(started) == 9)
    assert started[3:] == [f"deadline {n}" for n in range(2, 8)], "the waiting ones did not start in order"
    assert priority.waiting == 2 and priority.deadlines == 8

    release.set()
    await asyncio.gather(*running)
    assert started[9:] == ["deadline 8", "deadline 9"]
    assert (priority.deadlines, priority.waiting) == (0, 0)


async def test_an_alarm_arriving_behind_waiting_deadlines_starts_before_them() -> None:
    """A thousand deadlines fell due: the alarm that comes in is handled at once, not behind them."""
    priority = Priority(wide=4, narrow=1)
    started: list[str] = []
    release = asyncio.Event()

    async def deadline(n: int) -> None:
        started.append(f"deadline {n}")
        await release.wait()

    running = [asyncio.ensure_future(priority.run_deadline(lambda n=n: deadline(n))) for n in range(1000)]
    await settle(lambda: len(started) == 4)

    async def alarm() -> str:
        started.append("alarm")
        return "rung"

    assert await priority.run_alarm(alarm()) == "rung"
    assert started == ["deadline 0", "deadline 1", "deadline 2", "deadline 3", "alarm"]
    release.set()
    await asyncio.gather(*running)
    assert len(started) == 1001 and started[5] == "deadline 4" and started[-1] == "deadline 999"


async def test_a_waiting_deadline_cancelled_gives_its_place_on() -> None:
    priority = Priority(wide=1, narrow=1)
    release = asyncio.Event()
    done: list[int] = []

    async def deadline(n: int) -> None:
        await release.wait()
        done.append(n)

    first = asyncio.ensure_future(priority.run_deadline(lambda: deadline(1)))
    second = asyncio.ensure_future(priority.run_deadline(lambda: deadline(2)))
    third = asyncio.ensure_future(priority.run_deadline(lambda: deadline(3)))
    await settle(lambda: priority.waiting == 2)
    second.cancel()
    release.set()
    await asyncio.gather(first, third)
    assert done == [1, 3] and second.cancelled()
    assert (priority.deadlines, priority.waiting) == (0, 0)


def test_narrow_is_at_least_one_and_at_most_wide() -> None:
    with pytest.raises(ValueError):
        Priority(wide=4, narrow=0)
    with pytest.raises(ValueError):
        Priority(wide=4, narrow=5)
