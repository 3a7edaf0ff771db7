"""Deadlines as JetStream message schedules: they fire in the server, whatever happens to us.

A schedule is a message on `dispatch.sched.incident.<id>.<timer>` (a scheduled drill's on
`dispatch.sched.drill.<key>`, its body's `timer` `drill`) carrying
`Nats-Schedule: @at <RFC 3339 UTC, milliseconds>` and a target `dispatch.timer.incident.<id>.<timer>`
in the same stream (DISPATCH_TIMERS, `allow_msg_schedules`). At that time the server publishes the
body to the target, where the timers consumer takes it.

The server fires a schedule at its due time, but not at once when many fall due together: it
stores each fired message (fsynced) one after another, so 1,000 deadlines due in the same second
reach the timers consumer over most of a second even on an idle server (`benchmarks/deadlines.py`).
So a deadline this process sets is also kept in an in-process alarm clock (`on_due`), which hands
it to the escalation at its due time; the server's schedule stays the deadline of record. Whichever
comes first decides (the incident's unit of work records each tier once); the other finds the tier
reached and decides nothing.

Invariants:
- a subject holds one schedule: scheduling the same timer again replaces it (the same due time is
  a no-op), so re-scheduling on a redelivered trigger is safe; a due time in the past fires at once;
- an unreachable server is StoreUnavailable, and the caller does not acknowledge its trigger;
- schedules set while others are being stored go together in one atomic batch
  (`dispatch.store.groupcommit`: a storm's escalate deadlines are a handful of writes); a schedule
  in a batch fires as one published alone does;
- a deadline is kept in memory only after the server stored its schedule, never instead of it; the
  in-process clock fires a deadline at or after its due time (never before: a decision before the due
  time decides nothing), holds at most `MAX_IN_MEMORY` of them (beyond, the server's schedule alone),
  and is lost with the process, which the server's schedule covers;
- a deadline handled from the in-process clock is remembered (`already_handled`) until the server's
  firing of it has been taken (`forget`), and at most `HANDLED_KEPT_S` past its due time when that
  firing came first or never comes here: a firing taken after that is decided again, which decides
  nothing (the tier is reached). So what the clock remembers is bounded by the deadlines of the last
  minutes, not by every deadline since the start (it held one per deadline up to MAX_IN_MEMORY);
- a server's firing handled here before the in-process clock reached the same deadline is
  remembered the same way (`handling_here`), so the clock does not decide it again (`taken_here`):
  on a busy loop the server's firing can come first, and the deadline was counted fired twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from dispatch.events.subjects import (
    SCHEDULES_ALL,
    TIMERS_FIRED_ALL,
    TIMERS_STREAM,
    drill_fired_subject,
    drill_schedule_subject,
    schedule_subject,
    timer_fired_subject,
)
from dispatch.store.eventstore import AppendRejected, StoreUnavailable
from dispatch.store.groupcommit import GroupCommit


class TimerDue(msgspec.Struct, frozen=True, kw_only=True):
    """A deadline as scheduled and fired: the incident, the timer, when it was due."""

    incident_id: str
    timer: str
    due_at: datetime


MAX_IN_MEMORY = 100_000
FETCH_WAIT_S = 1.0
HANDLED_KEPT_S = 600.0

timer_encoder = msgspec.json.Encoder()
timer_decoder = msgspec.json.Decoder(TimerDue)


@contextlib.contextmanager
def settling(settled: asyncio.Future[bool]) -> Iterator[None]:
    """Settle a `Timers.handling_here` future when the block ends: True when it ended without an
    exception (the deadline decided), else False; the exception goes on."""
    handled = False
    try:
        yield
        handled = True
    finally:
        if not settled.done():
            settled.set_result(handled)


def at_header(due: datetime) -> str:
    """The `Nats-Schedule` value for a due time."""
    return "@at " + due.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


class Timers:
    """Sets deadlines as JetStream message schedules, and keeps them in an in-process clock too."""

    def __init__(self, nc: NATS, *, timeout: float = 3.0, on_due: Callable[[TimerDue], None] | None = None) -> None:
        self.nc = nc
        self.timeout = timeout
        self.on_due = on_due
        self.commit = GroupCommit(nc, timeout=timeout)
        self.catching_up = False
        """Set while overdue deadlines are being caught up in due-time order (`LocalDeadlines`)."""
        self._pending: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._here: OrderedDict[tuple[str, str, datetime], asyncio.Future[bool]] = OrderedDict()

    async def schedule(self, incident_id: str, timer: str, due: datetime) -> None:
        """Set (or replace) the incident's timer to fire at `due`."""
        target = timer_fired_subject(incident_id, timer)
        await self._set(schedule_subject(incident_id, timer), target, incident_id, timer, due)

    async def schedule_drill(self, key: str, timer: str, due: datetime) -> None:
        """Set (or replace) a scheduled drill's start (the drill's key as the body's `incident_id`)."""
        await self._set(drill_schedule_subject(key), drill_fired_subject(key), key, timer, due)

    async def _set(self, subject: str, target: str, incident_id: str, timer: str, due: datetime) -> None:
        if not self.nc.is_connected:
            raise StoreUnavailable("timers unavailable: not connected to NATS")
        body = timer_encoder.encode(TimerDue(incident_id=incident_id, timer=timer, due_at=due))
        headers = {"Nats-Schedule": at_header(due), "Nats-Schedule-Target": target}
        try:
            ack = await self.commit.publish([(subject, body, headers)])
        except (NatsTimeout, NoRespondersError, ConnectionClosedError) as exc:
            raise StoreUnavailable(f"timers unavailable: {type(exc).__name__}") from exc
        if "error" in ack:
            raise AppendRejected(f"{ack['error'].get('err_code')}: {ack['error'].get('description')}")
        if self.on_due is not None:
            self.keep(TimerDue(incident_id=incident_id, timer=timer, due_at=due))

    @property
    def in_memory(self) -> int:
        """How many deadlines the in-process clock holds."""
        return len(self._pending)

    def keep(self, due: TimerDue) -> None:
        """Fire `due` from the in-process clock at its due time (its schedule is stored), unless this
        very deadline is handled here already (a redelivered trigger setting it again)."""
        if (due.incident_id, due.timer, due.due_at) in self._here:
            return
        key = (due.incident_id, due.timer)
        earlier = self._pending.pop(key, None)
        if earlier is not None:
            earlier.cancel()
        if len(self._pending) >= MAX_IN_MEMORY:
            return
        loop = asyncio.get_running_loop()
        delay = (due.due_at - datetime.now(UTC)).total_seconds()
        self._pending[key] = loop.call_later(max(0.0, delay), self._fire, due)

    def _fire(self, due: TimerDue) -> None:
        key = (due.incident_id, due.timer)
        early = (due.due_at - datetime.now(UTC)).total_seconds()
        if early > 0:  # the loop's monotonic clock and the wall clock differ by a hair
            self._pending[key] = asyncio.get_running_loop().call_later(early, self._fire, due)
            return
        self._pending.pop(key, None)
        if self.taken_here(due):  # the server's firing came first and is handled here
            return
        if self.on_due is not None:
            self.on_due(due)

    def handling_here(self, due: TimerDue) -> asyncio.Future[bool]:
        """This deadline is being handled here (from the in-process clock, or the server's firing that
        came first): set the future's result to whether it was (decided, the next deadline stored),
        for `already_handled` and `taken_here`."""
        key = (due.incident_id, due.timer, due.due_at)
        settled = self._here[key] = asyncio.get_running_loop().create_future()
        while len(self._here) > MAX_IN_MEMORY:
            _, oldest = self._here.popitem(last=False)
            if not oldest.done():
                oldest.set_result(False)
        self._drop_handled_before(datetime.now(UTC))
        return settled

    def _drop_handled_before(self, now: datetime) -> None:
        """Forget the oldest handled deadlines due more than HANDLED_KEPT_S before `now`."""
        while self._here:
            (_, _, due_at), settled = next(iter(self._here.items()))
            if not settled.done() or (now - due_at).total_seconds() <= HANDLED_KEPT_S:
                return
            self._here.popitem(last=False)

    def forget(self, due: TimerDue) -> None:
        """The server's firing of this deadline has been taken: if it was handled here, forget it."""
        key = (due.incident_id, due.timer, due.due_at)
        settled = self._here.get(key)
        if settled is not None and settled.done():
            del self._here[key]

    @property
    def remembered(self) -> int:
        """How many deadlines handled (or being handled) here are remembered for `already_handled`."""
        return len(self._here)

    def taken_here(self, due: TimerDue) -> bool:
        """Whether this very deadline is being handled here, or was handled (not failed), from either
        side: the server's firing or the in-process clock."""
        settled = self._here.get((due.incident_id, due.timer, due.due_at))
        return settled is not None and (not settled.done() or settled.result())

    def known_here(self, due: TimerDue) -> bool:
        """Whether this very deadline is handled, or being handled, here (from the in-process clock,
        or from the server's firing that came first)."""
        return (due.incident_id, due.timer, due.due_at) in self._here

    async def already_handled(self, due: TimerDue) -> bool:
        """Whether this process handled this very deadline (same due time) from its in-process clock,
        waiting for that to finish if it is under way: the server's firing then needs nothing more."""
        settled = self._here.get((due.incident_id, due.timer, due.due_at))
        return settled is not None and await asyncio.shield(settled)

    async def outstanding(self, durable: str, *, limit: int = MAX_IN_MEMORY) -> tuple[list[TimerDue], list[TimerDue]]:
        """What a starting process takes over: the fired deadlines the timers consumer `durable` has
        not acknowledged past its ack floor (fired while no process ran, or taken by one that died),
        and the schedules still pending (a fired one leaves the stream); at most `limit` of each."""
        js = self.nc.jetstream(timeout=max(self.timeout, 10.0))
        pending = await self._read(SCHEDULES_ALL, 1, limit)  # first: one firing meanwhile is then in `fired`
        try:
            info = await js.consumer_info(TIMERS_STREAM, durable)
            floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
            fired = await self._read(TIMERS_FIRED_ALL, floor + 1, limit)
        except NotFoundError:
            fired = []
        except (NatsTimeout, NoRespondersError, ConnectionClosedError) as exc:
            raise StoreUnavailable(f"timers unavailable: {type(exc).__name__}") from exc
        return fired, pending

    async def _read(self, subjects: str, start: int, limit: int) -> list[TimerDue]:
        js = self.nc.jetstream(timeout=max(self.timeout, 10.0))
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            inactive_threshold=30.0,
        )
        try:
            reader = await js.pull_subscribe(subjects, stream=TIMERS_STREAM, config=config)
        except (NatsTimeout, NoRespondersError, ConnectionClosedError) as exc:
            raise StoreUnavailable(f"timers unavailable: {type(exc).__name__}") from exc
        try:
            return await self._drain(reader, limit)
        finally:
            with contextlib.suppress(Exception):
                await reader.unsubscribe()

    async def _drain(self, reader: JetStreamContext.PullSubscription, limit: int) -> list[TimerDue]:
        """Everything `reader` holds now, at most `limit`. A schedule fires (and leaves the stream) while
        it is read: the count the server gave at the start can be too high, so the count each message
        carries decides when it is over, and a fetch that finds nothing is over if the server says so
        (a restart waited 10 s there with 1,000 deadlines overdue, then read them all again)."""
        found: list[TimerDue] = []
        patience = max(self.timeout, 10.0)
        try:
            left = min(limit, (await reader.consumer_info()).num_pending or 0)
            waited = 0.0
            while left > 0:
                try:
                    batch = await reader.fetch(min(256, left), timeout=FETCH_WAIT_S)
                except (NatsTimeout, TimeoutError):
                    left = min(left, (await reader.consumer_info()).num_pending or 0)
                    waited += FETCH_WAIT_S
                    if left and waited >= patience:
                        raise
                    continue
                waited = 0.0
                for msg in batch:
                    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                        found.append(timer_decoder.decode(msg.data))
                left = min(left - len(batch), batch[-1].metadata.num_pending) if batch else 0
        except (NatsTimeout, TimeoutError) as exc:
            raise StoreUnavailable(f"timers unavailable: {type(exc).__name__}") from exc
        return found

    def close(self) -> None:
        """Forget the in-process deadlines (the server's schedules remain)."""
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        for settled in self._here.values():
            if not settled.done():
                settled.set_result(False)
        self._here.clear()
