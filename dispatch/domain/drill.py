"""The drill aggregate: a drill scheduled for a group at a date and time, started once, or called off.

A drill raised now is an incident like an officer's report (`route_call` with `for_group`, origin
`drill`); this aggregate exists for the drills set for later. Its schedule is a NATS message
schedule (`dispatch.store.timers`), the deadline of record; when it fires the drill is started once:
its incident is opened (idempotent per drill id) and `DrillStarted` names it.

Invariants:
- a drill's id is the client's (an idempotency key): scheduling the same drill again for the same
  group and time decides nothing, for another group or time is refused (409);
- a drill is started at most once, never before its time, never after it was called off; a drill
  already started cannot be called off (the incident is closed like any other, as a drill);
- `evolve` never fails: it folds whatever the log holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import msgspec

from dispatch.domain.errors import InvalidCommand, InvalidTransition, NotFound
from dispatch.events.model import Actor, DrillCancelled, DrillEvent, DrillScheduled, DrillStarted, Event
from dispatch.ids import stable_key

DRILL_TIMER = "drill"


def drill_key(drill_id: str) -> str:
    """The one-token key of a client's drill id (its subject and its schedule's)."""
    return stable_key("drill", drill_id)


def drill_call_id(drill_id: str) -> str:
    """The call id a drill's incident is opened with: a drill opens one incident, however often asked."""
    return f"drill:{drill_id}"


@dataclass(frozen=True, slots=True)
class DrillState:
    """A scheduled drill folded from its log."""

    scheduled: DrillScheduled
    incident_id: str | None = None
    cancelled_at: datetime | None = None

    @property
    def started(self) -> bool:
        """Whether its incident was opened."""
        return self.incident_id is not None


class ScheduleDrill(msgspec.Struct, frozen=True, kw_only=True):
    """Set a drill on a group for `due_at` (a village's officer or an admin, `actor`)."""

    drill_id: str
    village: str
    group: str
    due_at: datetime
    opened_by: str = ""
    opened_by_name: str = ""
    actor: Actor | None = None


class StartDrill(msgspec.Struct, frozen=True, kw_only=True):
    """The schedule fired and the drill's incident `incident_id` is open: record it (once)."""

    drill_id: str
    incident_id: str


class CancelDrill(msgspec.Struct, frozen=True, kw_only=True):
    """Call a scheduled drill off before it starts."""

    drill_id: str
    actor: Actor | None = None


DrillCommand = ScheduleDrill | StartDrill | CancelDrill


def decide(state: DrillState | None, command: DrillCommand, now: datetime) -> list[Event]:
    """The drill's decider. Raises NotFound, InvalidTransition (409), InvalidCommand (422)."""
    if isinstance(command, ScheduleDrill):
        if state is None:
            if command.due_at <= now:
                raise InvalidCommand("a scheduled drill's time must be in the future (leave it out to drill now)")
            return [
                DrillScheduled(
                    at=now,
                    drill_id=command.drill_id,
                    village=command.village,
                    group=command.group,
                    due_at=command.due_at,
                    opened_by=command.opened_by,
                    opened_by_name=command.opened_by_name,
                    actor=command.actor,
                )
            ]
        s = state.scheduled
        if (s.village, s.group, s.due_at) != (command.village, command.group, command.due_at):
            raise InvalidTransition(f"drill {command.drill_id} is already set for {s.village}/{s.group} at {s.due_at}")
        return []
    if state is None:
        raise NotFound(f"no drill {command.drill_id}")
    if isinstance(command, StartDrill):
        if state.started or state.cancelled_at is not None or now < state.scheduled.due_at:
            return []
        return [DrillStarted(at=now, drill_id=command.drill_id, incident_id=command.incident_id)]
    if state.started:
        raise InvalidTransition(f"drill {command.drill_id} has started: close its incident instead")
    if state.cancelled_at is not None:
        return []
    return [DrillCancelled(at=now, drill_id=command.drill_id, actor=command.actor)]


def due(state: DrillState | None, now: datetime) -> bool:
    """Whether a fired schedule should open the drill's incident: set, due, not started, not called off."""
    return state is not None and not state.started and state.cancelled_at is None and now >= state.scheduled.due_at


def evolve(state: DrillState | None, event: Event) -> DrillState | None:
    """Fold one event into the drill; unknown or stray events leave it unchanged."""
    if isinstance(event, DrillScheduled):
        return DrillState(scheduled=event) if state is None else state
    if state is None or not isinstance(event, DrillEvent):
        return state
    if isinstance(event, DrillStarted):
        return replace(state, incident_id=state.incident_id or event.incident_id)
    if isinstance(event, DrillCancelled):
        return replace(state, cancelled_at=state.cancelled_at or event.at)
    return state


def fold(events: list[Event]) -> DrillState | None:
    """The drill folded from its events, or None when it was never scheduled."""
    state: DrillState | None = None
    for event in events:
        state = evolve(state, event)
    return state
