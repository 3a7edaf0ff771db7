"""Answers: accept, decline, arrived, resolve, cancel — from the API, a keypad or an SMS reply.

Invariants:
- a decision is made on the incident as loaded from the log and appended with its last
  sequence expected; on conflict it is re-decided on fresh state (never blindly re-appended);
- an answer that changes nothing (a repeated accept) appends nothing and succeeds;
- closing an incident then closes its line (LineClosed, idempotent); if that second append is
  lost, the line's next call repairs it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from dispatch.clock import Clock, utcnow
from dispatch.domain.errors import InvalidCommand, NotFound
from dispatch.domain.incident import (
    Action,
    IncidentState,
    Respond,
    decide_response,
    evolve,
    fold,
    line_closed_msg_id,
)
from dispatch.domain.phone import InvalidPhone, normalize
from dispatch.events.model import (
    Event,
    IncidentCovered,
    LineClosed,
    LineEvent,
    ResponderAccepted,
    ResponderArrived,
)
from dispatch.events.subjects import InvalidToken, incident_history, incident_subject, line_subject
from dispatch.metrics import Metrics
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing, Recorded, StoreUnavailable

MAX_ATTEMPTS = 10


class ResponseRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    responder: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    action: Action
    category: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=500)] = ""
    reason: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class IncidentReader:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def load(self, incident_id: str) -> tuple[IncidentState, list[Recorded]]:
        """The incident folded from its decisions and notices, with that history in log order;
        an id that is not a UUID is InvalidCommand, and only this incident's events are folded."""
        try:
            subject = incident_history(incident_id)
        except InvalidToken as exc:
            raise InvalidCommand(str(exc)) from None
        history = [
            r for r in await self.store.load(subject) if getattr(r.event, "incident_id", incident_id) == incident_id
        ]
        state = fold([r.event for r in history])
        if state is None:
            raise NotFound(f"no incident {incident_id}")
        return state, history


def last_decision_seq(incident_id: str, history: list[Recorded]) -> int:
    subject = incident_subject(incident_id)
    return max((r.seq for r in history if r.subject == subject), default=0)


class ResponseService:
    def __init__(self, store: EventStore, metrics: Metrics, *, region: str = "CN", clock: Clock = utcnow) -> None:
        self.store = store
        self.reader = IncidentReader(store)
        self.metrics = metrics
        self.region = region
        self.clock = clock

    async def respond(
        self, incident_id: str, req: ResponseRequest, idempotency_key: str | None = None
    ) -> tuple[IncidentState, list[Event]]:
        try:
            responder = normalize(req.responder, self.region)
        except InvalidPhone as exc:
            raise InvalidCommand(str(exc)) from None
        command_id = idempotency_key or uuid.uuid4().hex
        for attempt in range(MAX_ATTEMPTS):
            state, history = await self.reader.load(incident_id)
            cmd = Respond(
                incident_id=incident_id,
                responder=responder,
                action=req.action,
                at=self.clock(),
                category=req.category,
                note=req.note[:500],
                reason=req.reason,
            )
            events = decide_response(state, cmd)
            if not events:
                return state, []
            try:
                await self._append(
                    incident_id, events, last_decision_seq(incident_id, history), f"resp:{incident_id}:{command_id}"
                )
            except AppendConflict:
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
                continue
            new_state = state
            for event in events:
                new_state = evolve(new_state, event) or new_state
            self._observe(state, events)
            who = state.responders.get(responder)
            self.metrics.responses.labels(req.action, who.person.role if who else "caller").inc()
            return new_state, events
        raise StoreUnavailable("too much contention on this incident, retry")

    async def _append(self, incident_id: str, events: list[Event], last_seq: int, prefix: str) -> None:
        decisions = [e for e in events if not isinstance(e, LineEvent)]
        messages = [
            Outgoing(incident_subject(incident_id), event, f"{prefix}:{i}", expected_seq=last_seq if i == 0 else None)
            for i, event in enumerate(decisions)
        ]
        await self.store.append(messages)
        for event in events:
            if isinstance(event, LineClosed):
                await self.store.append([Outgoing(line_subject(event.line), event, line_closed_msg_id(event))])

    def _observe(self, before: IncidentState, events: list[Event]) -> None:
        raised = before.raised_at
        for event in events:
            if isinstance(event, ResponderAccepted):
                if before.first_accept_at is None:
                    self.metrics.first_accept.labels(event.role).observe(_seconds(event.at, raised))
            elif isinstance(event, IncidentCovered):
                self.metrics.covered.observe(_seconds(event.at, raised))
            elif isinstance(event, ResponderArrived) and before.first_arrival_at is None:
                self.metrics.arrival.observe(_seconds(event.at, raised))


def _seconds(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())
