"""Aggregates as the handlers load them from the log (the unit of work's `Aggregate`s).

Invariants:
- an incident is folded from its decisions and its delivery notices, only events carrying its id;
  its expected sequence is the last one on its decision subject (notices never conflict with
  decisions);
- an id from outside that cannot name one subject is InvalidCommand before anything is read;
- a token is its subject's last event: issued (expected 0 when none) then perhaps revoked;
- the incident cache (`IncidentCache`) holds an incident as this process last decided or opened it,
  at exactly its decision subject's sequence then; it is a hint, never the truth: a decision made on
  it appends with that sequence expected, so a decision made elsewhere meanwhile is a conflict and the
  unit of work decides again on the log; its delivery notices may lag (they never conflict), so only
  decisions that read no notice may start from it (`EscalationService` on a fired deadline).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from dispatch.domain.errors import InvalidCommand, NotFound
from dispatch.domain.incident import IncidentState, evolve, fold
from dispatch.events.model import CallRouted, Event, LineClosed
from dispatch.events.subjects import (
    InvalidToken,
    call_index_subjects,
    incident_history,
    incident_subject,
    line_subject,
    token_subject,
)
from dispatch.handlers.uow import Loaded
from dispatch.store.eventstore import EventStore, Recorded

CACHED_INCIDENTS = 20_000


class IncidentCache:
    """Open incidents as this process last decided or opened them, each at its decision subject's
    sequence then; at most `size`, the least recently used forgotten first."""

    def __init__(self, size: int = CACHED_INCIDENTS) -> None:
        self.size = size
        self._held: OrderedDict[str, Loaded[IncidentState]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._held)

    def get(self, incident_id: str) -> Loaded[IncidentState] | None:
        """The incident as last remembered, or None."""
        found = self._held.get(incident_id)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._held.move_to_end(incident_id)
        return found

    def at(self, incident_id: str, seq: int) -> IncidentState | None:
        """The incident if it is remembered at exactly decision sequence `seq`."""
        found = self._held.get(incident_id)
        return found.state if found is not None and found.last_seq == seq else None

    def after(self, rec: Recorded) -> IncidentState | None:
        """The incident just after the decision `rec`: as remembered at its sequence, or folded from
        the remembered state `rec` was appended after (its expected sequence: nothing came between)."""
        found = self._held.get(getattr(rec.event, "incident_id", ""))
        if found is None:
            return None
        if found.last_seq == rec.seq:
            return found.state
        if rec.follows is None or found.last_seq != rec.follows:
            return None
        state = evolve(found.state, rec.event)
        if state is None:
            return None
        self.remember(Loaded(state, found.subject, rec.seq))
        return state

    def remember(self, loaded: Loaded[IncidentState]) -> None:
        """Keep an incident at its decision subject's sequence (a closed one is forgotten)."""
        if loaded.state.closed:
            self._held.pop(loaded.state.id, None)
            return
        current = self._held.get(loaded.state.id)
        if current is not None and current.last_seq > loaded.last_seq:
            return
        self._held[loaded.state.id] = loaded
        self._held.move_to_end(loaded.state.id)
        while len(self._held) > self.size:
            self._held.popitem(last=False)

    def decided(self, before: Loaded[IncidentState | None], events: Sequence[Event], seqs: Sequence[int]) -> None:
        """After a decision on `before` stored `events`, all on its decision subject, at `seqs`:
        remember the result."""
        if before.state is None or not events or len(seqs) != len(events):
            return
        state: IncidentState | None = before.state
        for event in events:
            state = evolve(state, event)
        if state is not None:
            self.remember(Loaded(state, before.subject, seqs[-1]))

    def seen(self, incident_id: str, seq: int) -> None:
        """A decision at `seq` exists: forget the incident if it is remembered at an earlier one."""
        found = self._held.get(incident_id)
        if found is not None and found.last_seq < seq:
            del self._held[incident_id]

    def forget(self, incident_id: str) -> None:
        """Drop the incident."""
        self._held.pop(incident_id, None)


class Incidents:
    """Incidents in the log."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def history(self, incident_id: str) -> tuple[IncidentState, list[Recorded]]:
        """The incident with its history in log order; NotFound when there is none."""
        state, history = await self._read(incident_id)
        if state is None:
            raise NotFound(f"no incident {incident_id}")
        return state, history

    async def get(self, incident_id: str) -> IncidentState:
        """The incident as it is now; NotFound when there is none."""
        state, _ = await self.history(incident_id)
        return state

    async def load(self, key: str) -> Loaded[IncidentState | None]:
        """The incident (None when it was never opened) and its decision subject's last sequence."""
        state, history = await self._read(key)
        subject = incident_subject(key)
        return Loaded(state, subject, max((r.seq for r in history if r.subject == subject), default=0))

    def subject_of(self, key: str, event: Event) -> str:
        """An incident's decisions go on its subject; the line it closes on the line's."""
        return line_subject(event.line) if isinstance(event, LineClosed) else incident_subject(key)

    async def _read(self, incident_id: str) -> tuple[IncidentState | None, list[Recorded]]:
        try:
            subject = incident_history(incident_id)
        except InvalidToken as exc:
            raise InvalidCommand(str(exc)) from None
        history = [
            r for r in await self.store.load(subject) if getattr(r.event, "incident_id", incident_id) == incident_id
        ]
        return fold([r.event for r in history]), history


class Tokens:
    """Access tokens in the log: each token id's subject holds its issue and its revocation."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def load(self, key: str) -> Loaded[Event | None]:
        """The token's last event (None: never issued) and its sequence."""
        subject = token_subject(key)
        last = await self.store.last(subject)
        return Loaded(last.event if last else None, subject, last.seq if last else 0)

    def subject_of(self, key: str, event: Event) -> str:
        """A token's events go on its own subject."""
        return token_subject(key)


def call_routed(known: dict[str, Recorded], call_id: str) -> CallRouted | None:
    """A call id's index entry among what was read (where it is now, or where deployments before
    DISPATCH_INDEX wrote it)."""
    for subject in call_index_subjects(call_id):
        routed = known.get(subject)
        if routed is not None and isinstance(routed.event, CallRouted):
            return routed.event
    return None
