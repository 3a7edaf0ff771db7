"""Answers: accept, decline, arrived, resolve, cancel — from the API, a keypad or an SMS reply.

Invariants:
- a decision is made on the incident as loaded from the log and appended with its last
  sequence expected; on conflict it is re-decided on fresh state (never blindly re-appended);
- an answer that changes nothing (a repeated accept) appends nothing and succeeds;
- closing an incident closes its line in the same atomic batch.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import datetime

import msgspec

from dispatch.clock import Clock, utcnow
from dispatch.domain.errors import InvalidCommand, NotFound
from dispatch.domain.incident import Action, IncidentState, Respond, decide_response, evolve, fold
from dispatch.domain.phone import InvalidPhone, normalize
from dispatch.events.model import Event, IncidentCovered, LineEvent, ResponderAccepted, ResponderArrived
from dispatch.events.subjects import incident_subject, line_subject
from dispatch.metrics import Metrics
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing, Recorded, StoreUnavailable

MAX_ATTEMPTS = 10


class ResponseRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    responder: str
    action: Action
    category: str | None = None
    note: str = ""
    reason: str | None = None


class IncidentReader:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def load(self, incident_id: str) -> tuple[IncidentState, list[Recorded]]:
        history = await self.store.load(incident_subject(incident_id))
        state = fold([r.event for r in history])
        if state is None:
            raise NotFound(f"no incident {incident_id}")
        return state, history


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
                await self._append(incident_id, events, history[-1].seq, f"resp:{incident_id}:{command_id}")
            except AppendConflict:
                self.metrics.append_conflicts.inc()
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
        messages = []
        expected_set = False
        for i, event in enumerate(events):
            if isinstance(event, LineEvent):
                messages.append(Outgoing(line_subject(event.line), event, f"{prefix}:{i}"))
            else:
                messages.append(
                    Outgoing(
                        incident_subject(incident_id),
                        event,
                        f"{prefix}:{i}",
                        expected_seq=None if expected_set else last_seq,
                    )
                )
                expected_set = True
        with self.metrics.append_seconds.time():
            await self.store.append(messages)

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
