"""GiveWay: a long loop yields to the event loop once it has held it for its budget, and a short one
never waits."""

from __future__ import annotations

import asyncio

from dispatch.store.giveway import GiveWay


async def test_a_loop_past_its_budget_lets_other_tasks_run_between_its_items() -> None:
    order: list[str] = []
    way = GiveWay(budget_s=0.0)

    async def other() -> None:
        order.append("other")

    task = asyncio.get_running_loop().create_task(other())
    for i in range(3):
        await way.turn()
        order.append(f"item{i}")
    await task
    assert order[0] == "other" and way.yields == 3


async def test_a_loop_within_its_budget_never_yields() -> None:
    order: list[str] = []
    way = GiveWay(budget_s=3600.0)

    async def other() -> None:
        order.append("other")

    task = asyncio.get_running_loop().create_task(other())
    for i in range(100):
        await way.turn()
        order.append(f"item{i}")
    await task
    assert order[-1] == "other" and way.yields == 0
