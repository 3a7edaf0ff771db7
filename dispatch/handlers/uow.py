"""The unit of work: load an aggregate from the log, decide, append with the expected sequence, retry.

Every handler that decides goes through `UnitOfWork.decide`.

Invariants:
- a decision is made on state folded from the log and its first message on the aggregate's subject
  carries that subject's last sequence as expected; on a conflict (another decision came first) the
  command is decided again on fresh state after a short random pause, never re-appended blindly;
  past `max_attempts` conflicts the log counts as unavailable (StoreUnavailable: retry later);
- a decision with no events appends nothing;
- the events on the aggregate's subject go in one append (an atomic batch when several); events on
  other subjects (a line closed, a call's index entry) follow, each alone and without expectation:
  their ids make a retry safe, and the decision they follow is already durable;
- message ids come from `dispatch.events.msgids`, through the `ids` the command gives.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from dispatch.clock import Clock, utcnow
from dispatch.events.model import Event
from dispatch.events.msgids import MessageIds
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing, StoreUnavailable

S = TypeVar("S")

MAX_ATTEMPTS = 10
PAUSE_S = 0.005


@dataclass(frozen=True, slots=True)
class Loaded(Generic[S]):
    """An aggregate as read from the log: its state and its subject's last sequence (0: none)."""

    state: S
    subject: str
    last_seq: int


@dataclass(frozen=True, slots=True)
class Decided(Generic[S]):
    """What one command decided: the aggregate as loaded for it, the events, their sequences."""

    loaded: Loaded[S]
    events: list[Event]
    seqs: list[int]

    @property
    def before(self) -> S:
        """The state the decision was made on."""
        return self.loaded.state


class Aggregate(Protocol[S]):
    """Where an aggregate lives in the log: how to load it and where its events go."""

    async def load(self, key: str) -> Loaded[S]:
        """The aggregate's state and last sequence."""
        ...

    def subject_of(self, key: str, event: Event) -> str:
        """The subject an event of this aggregate's decisions is appended to."""
        ...


Decide = Callable[[S, datetime], Sequence[Event]]


class UnitOfWork:
    """Loads, decides, appends with the expected sequence and retries a conflict."""

    def __init__(
        self, store: EventStore, *, clock: Clock = utcnow, max_attempts: int = MAX_ATTEMPTS, pause: float = PAUSE_S
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_attempts = max_attempts
        self.pause = pause

    async def decide(self, aggregate: Aggregate[S], key: str, decide: Decide[S], ids: MessageIds) -> Decided[S]:
        """Decide `decide(state, now)` on the aggregate `key` until it is stored or decides nothing."""
        return await self.decide_loaded(lambda: aggregate.load(key), aggregate, key, decide, ids)

    async def decide_loaded(
        self,
        load: Callable[[], Awaitable[Loaded[S]]],
        aggregate: Aggregate[S],
        key: str,
        decide: Decide[S],
        ids: MessageIds,
    ) -> Decided[S]:
        """As `decide`, with the state read by `load` (a handler that reads more in the same round trip)."""
        for attempt in range(self.max_attempts):
            loaded = await load()
            events = list(decide(loaded.state, self.clock()))
            if not events:
                return Decided(loaded, [], [])
            try:
                seqs = await self.append(aggregate, key, loaded, events, ids)
            except AppendConflict:
                await asyncio.sleep(random.uniform(0, self.pause * (attempt + 1)))
                continue
            return Decided(loaded, events, seqs)
        raise StoreUnavailable(f"{key}: too much contention, retry")

    async def append(
        self, aggregate: Aggregate[S], key: str, loaded: Loaded[S], events: list[Event], ids: MessageIds
    ) -> list[int]:
        """Append one decision: its own subject's events with the expectation, then the rest."""
        own: list[Outgoing] = []
        others: list[Outgoing] = []
        for i, event in enumerate(events):
            subject = aggregate.subject_of(key, event)
            if subject == loaded.subject:
                own.append(Outgoing(subject, event, ids(i, event), expected_seq=None if own else loaded.last_seq))
            else:
                others.append(Outgoing(subject, event, ids(i, event)))
        seqs = await self.store.append(own) if own else []
        for message in others:
            seqs += await self.store.append([message])
        return seqs
