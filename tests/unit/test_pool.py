"""TaskPool: bounded concurrency, and in-progress acks only while a handler is still working."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from nats.aio.msg import Msg

from dispatch.handlers.pool import TaskPool


class FakeMsg:
    def __init__(self) -> None:
        self.beats = 0

    async def in_progress(self) -> None:
        self.beats += 1


async def test_a_slow_handler_is_kept_in_progress_and_a_finished_one_is_not() -> None:
    pool = TaskPool(4, "t", heartbeat=0.05)
    slow, quick = FakeMsg(), FakeMsg()

    async def work(seconds: float) -> None:
        await asyncio.sleep(seconds)

    await pool.submit(lambda: work(0.23), cast(Msg, slow))
    await pool.submit(lambda: work(0.0), cast(Msg, quick))
    await pool.drain()
    beats_at_end = slow.beats
    await asyncio.sleep(0.15)
    assert beats_at_end >= 3
    assert slow.beats == beats_at_end
    assert quick.beats == 0


async def test_submit_waits_for_a_free_slot() -> None:
    pool = TaskPool(2, "t")
    gate = asyncio.Event()
    started: list[int] = []

    async def work(i: int) -> None:
        started.append(i)
        await gate.wait()

    await pool.submit(lambda: work(1))
    await pool.submit(lambda: work(2))
    third: asyncio.Task[Any] = asyncio.create_task(pool.submit(lambda: work(3)))
    await asyncio.sleep(0.05)
    assert not third.done() and pool.running == 2
    gate.set()
    await third
    await pool.drain()
    assert sorted(started) == [1, 2, 3]


async def test_a_handler_starts_before_submit_returns_and_one_done_at_once_frees_its_slot() -> None:
    pool = TaskPool(1, "t")
    steps: list[str] = []
    gate = asyncio.Event()

    async def quick() -> None:
        steps.append("quick")

    async def waits() -> None:
        steps.append("waits: before")
        await gate.wait()
        steps.append("waits: after")

    await pool.submit(quick)
    assert steps == ["quick"] and pool.running == 0
    await pool.submit(waits)
    assert steps == ["quick", "waits: before"] and pool.running == 1
    gate.set()
    await pool.drain()
    assert steps[-1] == "waits: after" and pool.running == 0
