"""Drills set for later: recorded in the log, started by a NATS message schedule, called off at will.

A drill raised now is an incident opened like an officer's report (`CallService.drill`); this
handler keeps the drills set for a date and time. Scheduling appends DrillScheduled (the drill's
decider, through the unit of work) and then sets the schedule `dispatch.sched.drill.<key>`
(`Timers.schedule`), so a retried request that found the event stored sets the schedule again (the
same due time is a no-op). When it fires (the server's schedule or this process's clock, whichever
first), the drill's incident is opened through the bus (idempotent per drill id: `drill:<id>` is its
call id) and DrillStarted names it.

Invariants:
- the schedule is set only after DrillScheduled is durable, and a fired schedule is acknowledged
  only after the incident is open and DrillStarted stored: a crash in between fires it again, which
  opens nothing new (the call id is answered) and records the start once;
- a drill called off, already started, or unknown opens nothing when its schedule fires.
"""

from __future__ import annotations

from datetime import datetime

import structlog

from dispatch.domain import drill as drills
from dispatch.domain.drill import DRILL_TIMER, CancelDrill, DrillState, ScheduleDrill, StartDrill, drill_key
from dispatch.domain.errors import NotFound
from dispatch.events import msgids
from dispatch.events.model import Event
from dispatch.events.subjects import drill_subject
from dispatch.handlers.bus import MessageBus
from dispatch.handlers.messages import CallResult, DrillResult, OpenDrill
from dispatch.handlers.uow import Loaded, UnitOfWork
from dispatch.store.eventstore import EventStore
from dispatch.store.timers import TimerDue, Timers

log = structlog.get_logger(__name__)


class Drills:
    """Scheduled drills in the log: each drill's subject holds its schedule, start and calling off."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def load(self, key: str) -> Loaded[DrillState | None]:
        """The drill (None: never scheduled) and its subject's last sequence."""
        subject = drill_subject(key)
        history = await self.store.load(subject)
        return Loaded(drills.fold([r.event for r in history]), subject, history[-1].seq if history else 0)

    def subject_of(self, key: str, event: Event) -> str:
        """A drill's events go on its own subject."""
        return drill_subject(key)


class DrillService:
    """Schedules drills, starts them when their schedule fires, calls them off."""

    def __init__(self, uow: UnitOfWork, bus: MessageBus, timers: Timers) -> None:
        self.uow = uow
        self.bus = bus
        self.timers = timers
        self.drills = Drills(uow.store)

    async def schedule(self, command: ScheduleDrill) -> DrillResult:
        """Record the drill, then set its schedule; a retried request sets the same schedule again."""
        key = drill_key(command.drill_id)
        decided = await self.uow.decide(
            self.drills,
            key,
            lambda state, now: drills.decide(state, command, now),
            msgids.indexed(f"drill:{key}:schedule"),
        )
        state = decided.before
        for event in decided.events:
            state = drills.evolve(state, event)
        assert state is not None
        if not state.started and state.cancelled_at is None:
            await self.timers.schedule_drill(key, DRILL_TIMER, state.scheduled.due_at)
        log.info("drill.scheduled", drill=key, due_at=state.scheduled.due_at.isoformat(), repeated=not decided.events)
        return DrillResult(
            drill_id=command.drill_id,
            status="raised" if state.started else "scheduled",
            incident_id=state.incident_id,
            due_at=state.scheduled.due_at,
            duplicate=not decided.events,
        )

    async def cancel(self, command: CancelDrill) -> bool:
        """Call a scheduled drill off (its schedule then opens nothing); False when it already was."""
        key = drill_key(command.drill_id)
        decided = await self.uow.decide(
            self.drills,
            key,
            lambda state, now: drills.decide(state, command, now),
            msgids.indexed(f"drill:{key}:cancel"),
        )
        return bool(decided.events)

    async def get(self, drill_id: str) -> DrillState:
        """A scheduled drill as it is now; NotFound when there is none."""
        state = (await self.drills.load(drill_key(drill_id))).state
        if state is None:
            raise NotFound(f"no drill {drill_id}")
        return state

    async def on_due(self, due: TimerDue) -> str | None:
        """A drill's schedule fired: open its incident (once) and record the start; the incident id."""
        key = due.incident_id
        loaded = await self.drills.load(key)
        state = loaded.state
        now = self.uow.clock()
        if state is None or not drills.due(state, now):
            log.info("drill.not_started", drill=key, known=state is not None)
            return state.incident_id if state is not None else None
        s = state.scheduled
        opened: CallResult = await self.bus.handle(
            OpenDrill(
                drill_id=s.drill_id,
                village=s.village,
                group=s.group,
                opened_by=s.opened_by,
                opened_by_name=s.opened_by_name,
            )
        )
        start = StartDrill(drill_id=s.drill_id, incident_id=opened.incident_id)
        await self.uow.decide(
            self.drills, key, lambda st, at: drills.decide(st, start, at), msgids.indexed(f"drill:{key}:start")
        )
        log.info("drill.started", drill=key, incident_id=opened.incident_id)
        return opened.incident_id


def scheduled_for_later(at: datetime | None, now: datetime) -> bool:
    """Whether a drill request sets a drill for later (a time in the future) rather than raising it now."""
    return at is not None and at > now
