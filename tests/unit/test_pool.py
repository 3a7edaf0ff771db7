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


async def test_offer_never_waits_urgent_work_runs_past_the_limit_and_the_rest_in_order() -> None:
    pool = TaskPool(1, "t")
    gate = asyncio.Event()
    started: list[str] = []
    finished = asyncio.Event()

    async def work(name: str) -> None:
        started.append(name)
        if name in ("first", "alarm 1"):
            await gate.wait()
        if name == "later 2":
            finished.set()

    await pool.offer(lambda: work("first"))
    for name, urgent in (("later 1", False), ("alarm 1", True), ("later 2", False), ("alarm 2", True)):
        offered = pool.offer(lambda name=name: work(name), urgent=urgent)  # type: ignore[misc]
        await asyncio.wait_for(offered, 1)  # returns although the one place is taken
    assert started == ["first", "alarm 1", "alarm 2"], "an alarm waited for a place"
    assert pool.queued == 2 and pool.running == 2  # "first" and the waiting "alarm 1"
    gate.set()
    await asyncio.wait_for(finished.wait(), 5)
    assert started == ["first", "alarm 1", "alarm 2", "later 1", "later 2"]
    assert pool.queued == 0
    await pool.drain()


async def test_work_offered_past_the_limit_does_not_free_a_place_it_never_took() -> None:
    pool = TaskPool(1, "t")
    gate = asyncio.Event()
    running: list[str] = []

    async def hold(name: str) -> None:
        running.append(name)
        await gate.wait()
        running.remove(name)

    ended = asyncio.Event()

    async def urgent() -> None:
        await asyncio.sleep(0)
        ended.set()

    await pool.offer(lambda: hold("held"))
    await pool.offer(lambda: hold("queued"))
    await pool.offer(urgent, urgent=True)  # runs past the limit and ends
    await ended.wait()
    for _ in range(3):  # a place it wrongly handed over would start "queued" within these turns
        await asyncio.sleep(0)
    assert running == ["held"] and pool.queued == 1, "an urgent handler's end freed a place it never took"
    gate.set()
    await pool.drain()


async def test_a_queued_message_is_kept_in_progress_until_it_runs_and_drain_drops_the_queue() -> None:
    pool = TaskPool(1, "t", heartbeat=0.05)
    clock = TaskPool(1, "clock", heartbeat=0.05)  # a handler that never ends: its beats mark time
    control, queued, dropped = Beating(), Beating(), Beating()
    gate, forever = asyncio.Event(), asyncio.Event()
    ran = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    async def run() -> None:
        ran.set()

    await clock.offer(forever.wait, cast(Msg, control))
    await pool.offer(hold)
    await pool.offer(run, cast(Msg, queued))
    await asyncio.wait_for(queued.until(2), 5)  # told in progress while it waits for the place
    gate.set()
    await asyncio.wait_for(ran.wait(), 5)
    beats = queued.beats
    await asyncio.wait_for(control.until(control.beats + 3), 5)
    assert queued.beats <= beats + 1, "in progress was still told after its handler ended"

    gate.clear()
    await pool.offer(hold)
    await pool.offer(lambda: asyncio.sleep(0), cast(Msg, dropped))
    await pool.drain(timeout=0.1)
    assert pool.queued == 0 and pool.running == 0
    beats = dropped.beats
    await asyncio.wait_for(control.until(control.beats + 3), 5)
    assert dropped.beats == beats, "a dropped message was still told in progress"
    forever.set()
    await clock.drain()


class Beating(FakeMsg):
    """A FakeMsg that can be waited on until it has been told in progress `n` times."""

    def __init__(self) -> None:
        super().__init__()
        self.told = asyncio.Event()

    async def in_progress(self) -> None:
        await super().in_progress()
        self.told.set()

    async def until(self, n: int) -> None:
        while self.beats < n:
            self.told.clear()
            await self.told.wait()
