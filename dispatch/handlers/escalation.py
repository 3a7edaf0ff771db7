"""Escalation: a deadline fired, or an officer turned out unreachable — decide, record, let the fan-out ring.

Invariants:
- the decision is made on the incident as loaded from the log and appended with its last decision
  sequence expected, so two processes handling the same timer record each tier once;
- a fired timer of a closed incident, or of a tier already reached, decides nothing;
- the ack deadline of an uncovered incident sets its escalate deadline before the timer is
  acknowledged (`deadline_after`), so the escalate deadline is never missing when it matters;
- the command centre is whoever the settings name at the moment of tier 2.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime

import structlog

from dispatch.clock import Clock, utcnow
from dispatch.domain.incident import IncidentState, Timer, deadline_after, decide_timer, decide_unreachable
from dispatch.events.model import IncidentEscalated, Person
from dispatch.events.subjects import incident_subject
from dispatch.handlers.responses import IncidentReader, last_decision_seq
from dispatch.metrics import Metrics
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing, StoreUnavailable
from dispatch.store.timers import Timers

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 10


class EscalationService:
    def __init__(
        self,
        store: EventStore,
        *,
        metrics: Metrics,
        command_centre: Person | None,
        timers: Timers,
        clock: Clock = utcnow,
    ) -> None:
        self.timers = timers
        self.store = store
        self.reader = IncidentReader(store)
        self.metrics = metrics
        self.command_centre = command_centre
        self.clock = clock

    async def timer_fired(self, incident_id: str, timer: Timer) -> list[IncidentEscalated]:
        self.metrics.timers_fired.labels(timer).inc()
        state, escalated = await self._decide(
            incident_id, lambda state, at: decide_timer(state, timer, at, self.command_centre), f"timer:{timer}"
        )
        following = deadline_after(state, timer)
        if following is not None:
            await self.timers.schedule(incident_id, *following)
        return escalated

    async def check_unreachable(self, incident_id: str) -> list[IncidentEscalated]:
        _, escalated = await self._decide(incident_id, decide_unreachable, "unreachable")
        return escalated

    async def _decide(
        self, incident_id: str, decide: object, why: str
    ) -> tuple[IncidentState, list[IncidentEscalated]]:
        """The incident as loaded for the decision, and the escalations recorded."""
        for attempt in range(MAX_ATTEMPTS):
            state, history = await self.reader.load(incident_id)
            at: datetime = self.clock()
            events = decide(state, at)  # type: ignore[operator]
            if not events:
                return state, []
            subject = incident_subject(incident_id)
            last = last_decision_seq(incident_id, history)
            messages = [
                Outgoing(subject, event, f"escalate:{incident_id}:{event.tier}", expected_seq=last if i == 0 else None)
                for i, event in enumerate(events)
            ]
            try:
                await self.store.append(messages)
            except AppendConflict:
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
                continue
            for event in events:
                self.metrics.escalations.labels(str(event.tier), event.reason).inc()
                log.warning(
                    "incident.escalated",
                    incident_id=incident_id,
                    tier=event.tier,
                    reason=event.reason,
                    alerted=len(event.alerted),
                    cause=why,
                )
            return state, list(events)
        raise StoreUnavailable(f"escalation of {incident_id}: too much contention, retry")
