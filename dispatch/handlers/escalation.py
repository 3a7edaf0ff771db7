"""Escalation: a deadline fired, or an officer turned out unreachable — decide, record, let the fan-out ring.

Invariants:
- every escalation is decided by the incident's `decide` through the unit of work, so two processes
  handling the same timer record each tier once (one message id per tier);
- a fired timer of a closed incident, or of a tier already reached, decides nothing;
- the ack deadline of an uncovered incident sets its escalate deadline (and, where neighbouring
  groups go before the station, the station's) before the timer is acknowledged (`deadlines_after`),
  so no following deadline is ever missing when it matters;
- a permanent delivery failure is an event this handler reacts to (`on_delivery_failed`): when no
  officer can be reached any more, tier 1 happens at once;
- the command centre is whoever the settings name at the moment of tier 2;
- a fired deadline is decided on the incident as this process last knew it (`IncidentCache`), read
  from the log only when it is not remembered, when the append meets a conflict (a decision made
  elsewhere), or when the remembered state decides nothing (it may lag behind the log, and a decision
  of nothing appends nothing that could conflict); what it decided is remembered;
- the deadline a fired one sets is stored while the decision is appended, not after it, when the
  remembered state already names it (its due time follows from the opened incident alone): set for
  an incident covered meanwhile it fires and decides nothing. The fired deadline is acknowledged only
  after both.
"""

from __future__ import annotations

import structlog

from dispatch.domain.errors import InvalidCommand
from dispatch.domain.incident import (
    TIMERS,
    CheckUnreachable,
    FireTimer,
    IncidentCommand,
    IncidentState,
    Timer,
    deadline_after,
    deadlines_after,
    decide,
)
from dispatch.events import msgids
from dispatch.events.model import DeliveryFailed, IncidentEscalated, NeighboursAlerted, Person
from dispatch.handlers.aggregates import IncidentCache, Incidents
from dispatch.handlers.eager import start
from dispatch.handlers.uow import Decided, Loaded, UnitOfWork
from dispatch.observe.metrics import Metrics
from dispatch.store.timers import TimerDue, Timers

log = structlog.get_logger(__name__)


class EscalationService:
    """Decides escalations when deadlines fire or officers are unreachable."""

    def __init__(
        self,
        uow: UnitOfWork,
        *,
        metrics: Metrics,
        command_centre: Person | None,
        timers: Timers,
        cache: IncidentCache | None = None,
    ) -> None:
        self.uow = uow
        self.incidents = Incidents(uow.store)
        self.cache = cache if cache is not None else IncidentCache()
        self.timers = timers
        self.metrics = metrics
        self.command_centre = command_centre

    async def timer_fired(self, incident_id: str, timer: Timer) -> list[IncidentEscalated]:
        """A deadline fell due: escalate if the incident is not where it should be, set the next deadline."""
        self.metrics.timers_fired.labels(timer).inc()
        command = FireTimer(incident_id=incident_id, timer=timer, command_centre=self.command_centre)
        remembered = self.cache.get(incident_id)
        early = deadline_after(remembered.state, timer) if remembered is not None else None
        setting = start(self.timers.schedule(incident_id, *early)) if early is not None else None
        try:
            state, escalated = await self._decide(command, f"timer:{timer}", remembered=remembered)
        finally:
            if setting is not None:
                await setting
        for following in deadlines_after(state, timer):
            if following == early:
                continue
            await self.timers.schedule(incident_id, *following)
        return escalated

    async def on_timer(self, due: TimerDue) -> list[IncidentEscalated]:
        """A schedule fired (see `dispatch.store.timers`); a timer this service does not know is an error."""
        timer = next((t for t in TIMERS if t == due.timer), None)
        if timer is None:
            raise InvalidCommand(f"unknown timer {due.timer!r}")
        return await self.timer_fired(due.incident_id, timer)

    async def on_delivery_failed(self, event: DeliveryFailed) -> list[IncidentEscalated]:
        """A delivery failed: if permanently, and no officer can be reached any more, escalate now."""
        if not any(f.kind == "permanent" for f in event.failures):
            return []
        _, escalated = await self._decide(CheckUnreachable(incident_id=event.incident_id), "unreachable")
        return escalated

    async def _decide(
        self, command: IncidentCommand, why: str, *, remembered: Loaded[IncidentState] | None = None
    ) -> tuple[IncidentState, list[IncidentEscalated]]:
        decided, on_remembered = await self._decide_on(command, remembered)
        if on_remembered and not decided.events:
            decided, _ = await self._decide_on(command, None)  # the remembered state may lag: ask the log
        if decided.events:
            self.cache.decided(decided.loaded, decided.events, decided.seqs)
        elif decided.loaded.state is not None:
            self.cache.remember(Loaded(decided.loaded.state, decided.loaded.subject, decided.loaded.last_seq))
        escalated = [e for e in decided.events if isinstance(e, IncidentEscalated)]
        for alerted in decided.events:
            if isinstance(alerted, NeighboursAlerted):
                log.warning(
                    "incident.neighbours_alerted",
                    incident_id=command.incident_id,
                    reason=alerted.reason,
                    groups=len(alerted.groups),
                    alerted=len(alerted.alerted),
                    cause=why,
                )
        for event in escalated:
            self.metrics.escalations.labels(str(event.tier), event.reason).inc()
            log.warning(
                "incident.escalated",
                incident_id=command.incident_id,
                tier=event.tier,
                reason=event.reason,
                alerted=len(event.alerted),
                cause=why,
            )
        assert decided.before is not None
        return decided.before, escalated

    async def _decide_on(
        self, command: IncidentCommand, remembered: Loaded[IncidentState] | None
    ) -> tuple[Decided[IncidentState | None], bool]:
        """The unit of work on `remembered` first (if any), on the log after a conflict; and whether
        the decision was made on `remembered`."""
        left = [remembered]
        used = [False]

        async def load() -> Loaded[IncidentState | None]:
            hit, left[0] = left[0], None
            used[0] = hit is not None
            if hit is not None:
                return Loaded(hit.state, hit.subject, hit.last_seq)
            return await self.incidents.load(command.incident_id)

        decided = await self.uow.decide_loaded(
            load,
            self.incidents,
            command.incident_id,
            lambda state, now: decide(state, command, now),
            msgids.escalation(command.incident_id),
        )
        return decided, used[0]
