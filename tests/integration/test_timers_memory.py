"""The in-process deadline clock remembers handled deadlines for a while, not for ever (issue 24, the soak).

Before: every deadline handled from the in-process clock stayed in `Timers._here` (a future and its key)
until 100,000 of them, one or more per alarm: a soak's serve grew by about 1 future per alarm beyond its
bounded caches. Counted here, not timed: after N deadlines, how many are still remembered.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client as NATS

from dispatch.store.timers import HANDLED_KEPT_S, TimerDue, Timers

N = 500


def due(i: int, at: datetime) -> TimerDue:
    return TimerDue(incident_id=f"inc-{i}", timer="ack", due_at=at)


async def test_a_deadline_is_forgotten_once_the_servers_firing_of_it_is_taken(nc: NATS) -> None:
    timers = Timers(nc)
    now = datetime.now(UTC)
    for i in range(N):
        timers.handling_here(due(i, now)).set_result(True)
    assert timers.remembered == N
    for i in range(N):
        assert await timers.already_handled(due(i, now)), "the server's firing needs nothing more"
        timers.forget(due(i, now))
    assert timers.remembered == 0
    assert not await timers.already_handled(due(0, now)), "forgotten: a late firing is decided again"


async def test_one_being_handled_is_not_forgotten(nc: NATS) -> None:
    timers = Timers(nc)
    now = datetime.now(UTC)
    settled = timers.handling_here(due(1, now))
    timers.forget(due(1, now))
    assert timers.known_here(due(1, now)), "still under way: the server's firing must wait for it"
    settled.set_result(True)
    assert await timers.already_handled(due(1, now))


async def test_deadlines_whose_firing_never_comes_here_are_kept_no_longer_than_the_window(nc: NATS) -> None:
    timers = Timers(nc)
    now = datetime.now(UTC)
    old = now - timedelta(seconds=HANDLED_KEPT_S + 60)
    for i in range(N):  # handled here; the server's firing went to another process, or came first
        timers.handling_here(due(i, old + timedelta(milliseconds=i))).set_result(True)
    recent = [due(N + i, now - timedelta(seconds=1)) for i in range(3)]
    for d in recent:
        timers.handling_here(d).set_result(True)
    assert timers.remembered == len(recent), "the old ones are dropped as new ones come"
    assert all([await timers.already_handled(d) for d in recent])


async def test_the_clock_does_not_decide_a_deadline_whose_servers_firing_came_first_and_was_handled(
    nc: NATS,
) -> None:
    """On a busy loop the server's firing can be taken before the in-process clock reaches the same
    deadline: the clock then skips it (it was decided, and counted fired, twice), unless that
    handling failed."""
    fired: list[TimerDue] = []
    last = asyncio.Event()

    def on_due(d: TimerDue) -> None:
        fired.append(d)
        if d.incident_id == "marker":
            last.set()

    timers = Timers(nc, on_due=on_due)
    soon = datetime.now(UTC) + timedelta(milliseconds=50)
    handled, failed = due(1, soon), due(2, soon)
    marker = TimerDue(incident_id="marker", timer="ack", due_at=soon + timedelta(milliseconds=50))
    for d in (handled, failed, marker):
        timers.keep(d)  # on the clock, as a schedule this process set
    timers.handling_here(handled).set_result(True)  # the server's firings, taken first
    timers.handling_here(failed).set_result(False)
    await asyncio.wait_for(last.wait(), 5)
    assert [d.incident_id for d in fired] == ["inc-2", "marker"]
