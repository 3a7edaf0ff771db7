"""GiveWay: a long loop yields to the event loop once it has held it for its budget, and a short one
never waits."""

from __future__ import annotations

import asyncio

from dispatch.store.giveway import GiveWay


async def loop_beside_another_task(budget_s: float, items: int) -> tuple[list[str], int]:
    """A loop of `items` turns of a GiveWay with `budget_s`, with another task ready when it starts:
    the order things ran in, and how often the loop gave way."""
    order: list[str] = []
    way = GiveWay(budget_s=budget_s)

    async def other() -> None:
        order.append("other")

    task = asyncio.get_running_loop().create_task(other())
    for i in range(items):
        await way.turn()
        order.append(f"item{i}")
    await task
    return order, way.yields


async def test_a_loop_past_its_budget_lets_other_tasks_run_between_its_items() -> None:
    order, yields = await loop_beside_another_task(0.0, 3)
    assert order[0] == "other" and yields == 3


async def test_a_loop_within_its_budget_never_yields() -> None:
    order, yields = await loop_beside_another_task(3600.0, 100)
    assert order[-1] == "other" and yields == 0
