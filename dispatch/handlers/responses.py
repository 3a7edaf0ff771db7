"""Answers: accept, decline, arrived, resolve, cancel — from the API, a keypad or an SMS reply.

Invariants:
- an answer is decided by the incident's `decide` through the unit of work: on the incident as
  loaded from the log, appended with its last decision sequence expected, re-decided on conflict;
- an answer that changes nothing (a repeated accept) appends nothing and succeeds;
- an answer names its actor (the face that took it); without a number, the responder is the
  actor's own number (the console's "my number" comes from the token);
- an answer recorded here tells this process's incident cache (`IncidentCache.seen`), so a resolved
  or cancelled incident is not held there as open (the fan-out hears neither resolve nor arrival);
- closing an incident then closes its line (LineClosed, idempotent); if that second append is
  lost, the line's next call repairs it.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from dispatch.domain.errors import InvalidCommand
from dispatch.domain.incident import IncidentState, Respond, decide, evolve
from dispatch.domain.phone import InvalidPhone, normalize
from dispatch.events import msgids
from dispatch.events.model import Event, IncidentCovered, ResponderAccepted, ResponderArrived
from dispatch.handlers.aggregates import IncidentCache, Incidents
from dispatch.handlers.messages import Answer
from dispatch.handlers.uow import UnitOfWork
from dispatch.observe.metrics import Metrics


class ResponseService:
    """Records answers to incidents."""

    def __init__(
        self, uow: UnitOfWork, metrics: Metrics, *, region: str = "CN", cache: IncidentCache | None = None
    ) -> None:
        self.uow = uow
        self.cache = cache
        self.incidents = Incidents(uow.store)
        self.metrics = metrics
        self.region = region

    async def answer(self, command: Answer) -> tuple[IncidentState, list[Event]]:
        """Record an answer; return the incident after it and what was recorded (nothing: no change)."""
        req = command.request
        said = req.responder or (command.actor.phone if command.actor else "")
        if not said:
            raise InvalidCommand("responder is required: this token carries no number of its own")
        try:
            responder = normalize(said, self.region)
        except InvalidPhone as exc:
            raise InvalidCommand(str(exc)) from None
        respond = Respond(
            incident_id=command.incident_id,
            responder=responder,
            action=req.action,
            category=req.category,
            note=req.note[:500],
            reason=req.reason,
            actor=command.actor,
        )
        decided = await self.uow.decide(
            self.incidents,
            command.incident_id,
            lambda state, now: decide(state, respond, now),
            msgids.response(command.incident_id, command.idempotency_key or uuid.uuid4().hex),
        )
        state = decided.before
        assert state is not None
        if not decided.events:
            return state, []
        if self.cache is not None and decided.seqs:
            self.cache.seen(command.incident_id, decided.seqs[-1])
        after = state
        for event in decided.events:
            after = evolve(after, event) or after
        self._observe(state, decided.events)
        who = state.responders.get(responder)
        self.metrics.responses.labels(req.action, who.person.role if who else "caller").inc()
        if command.actor is not None and command.actor.phone != responder:
            self.metrics.proxy_answers.labels(req.action).inc()
        return after, decided.events

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
