"""Build incident histories for read-model tests with the domain's own deciders, at chosen times."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dispatch.domain.directory import Directory
from dispatch.domain.incident import (
    DEFAULT_QUORUM,
    IncidentState,
    IncomingCall,
    Respond,
    decide_response,
    evolve,
    open_incident,
    parse_quorum,
    route_call,
)
from dispatch.domain.roster import parse_roster, plan_import
from dispatch.events.model import (
    CallRouted,
    DeliveryFailed,
    DeliverySucceeded,
    Event,
    IncidentEvent,
    LineEvent,
    Person,
    Reached,
    RespondersNotified,
    Unreached,
    VillageSettingsChanged,
)
from dispatch.events.subjects import call_subject, group_subject, incident_subject, line_subject, notice_subject
from dispatch.events.subjects import village_subject as village_subj
from dispatch.store.eventstore import Recorded

DUTY = (Person(phone="+867310000110", name="县局值班室", role="duty"),)


def subject_of(event: Event) -> str:
    if isinstance(event, LineEvent):
        return line_subject(event.line)
    if isinstance(event, CallRouted):
        return call_subject(event.call_id)
    if isinstance(event, (RespondersNotified, DeliverySucceeded, DeliveryFailed)):
        return notice_subject(event.incident_id)
    if isinstance(event, IncidentEvent):
        return incident_subject(event.incident_id)
    village = getattr(event, "village", "")
    group = getattr(event, "group", None)
    return group_subject(village, group) if group is not None else village_subj(village)


def recorded(events: Sequence[Event], *, start: int = 1) -> list[Recorded]:
    """Every event with the subject and a stream sequence the service would give it."""
    now = datetime.now(UTC)
    return [
        Recorded(seq=seq, subject=subject_of(event), event=event, msg_id=f"t:{seq}", time=now)
        for seq, event in enumerate(events, start=start)
    ]


def roster(text: str, at: datetime) -> tuple[Directory, list[Event]]:
    directory = Directory()
    events: list[Event] = []
    for change in plan_import(directory, parse_roster(text), at).changes:
        for event in change.events:
            events.append(event)
            directory.apply(event, len(events))
    return directory, events


def village_settings(village: str, at: datetime, **values: object) -> VillageSettingsChanged:
    return VillageSettingsChanged(at=at, village=village, **values)  # type: ignore[arg-type]


@dataclass
class Alarm:
    """One call and what people did about it, in seconds after the call."""

    caller: str
    at: datetime
    accepts: list[tuple[str, float]] = field(default_factory=list)
    declines: list[tuple[str, float]] = field(default_factory=list)
    arrive: tuple[str, float] | None = None
    resolve: tuple[str, float, str] | None = None
    cancel: tuple[str, float, str] | None = None
    failures: dict[str, str] = field(default_factory=dict)
    notify: bool = True


class Histories:
    """Incidents on one directory; each line's epochs count up as the service's would."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.epochs: dict[str, int] = {}
        self.calls = 0

    def events(self, alarm: Alarm) -> list[Event]:
        self.calls += 1
        call = IncomingCall(
            call_id=f"h-{self.calls}",
            caller_raw=alarm.caller,
            caller=alarm.caller,
            callee="6995",
            channel="voice",
            called_at=alarm.at,
            at=alarm.at,
        )
        route = route_call(self.directory, call, parse_quorum(DEFAULT_QUORUM), DUTY)
        epoch = self.epochs.get(route.line, 0) + 1
        self.epochs[route.line] = epoch
        opened = open_incident(route, call, epoch)
        out: list[Event] = [opened]
        state: IncidentState | None = evolve(None, opened)

        def after(seconds: float) -> datetime:
            return alarm.at + timedelta(seconds=seconds)

        if alarm.notify:
            phones = tuple(p.phone for p in opened.recipients)
            notices: list[Event] = [
                RespondersNotified(at=after(0.5), incident_id=opened.incident_id, channel="sms", round=1, phones=phones)
            ]
            ok = tuple(Reached(phone=p) for p in phones if p not in alarm.failures)
            if ok:
                notices.append(
                    DeliverySucceeded(at=after(1.0), incident_id=opened.incident_id, channel="sms", round=1, targets=ok)
                )
            if alarm.failures:
                notices.append(
                    DeliveryFailed(
                        at=after(1.0),
                        incident_id=opened.incident_id,
                        channel="sms",
                        round=1,
                        failures=tuple(
                            Unreached(phone=p, kind=kind, reason="test")  # type: ignore[arg-type]
                            for p, kind in alarm.failures.items()
                        ),
                    )
                )
            for event in notices:
                state = evolve(state, event)
            out += notices
        steps: list[tuple[float, str, str, str | None]] = [(dt, who, "accept", None) for who, dt in alarm.accepts]
        steps += [(dt, who, "decline", None) for who, dt in alarm.declines]
        if alarm.arrive:
            steps.append((alarm.arrive[1], alarm.arrive[0], "arrived", None))
        if alarm.resolve:
            steps.append((alarm.resolve[1], alarm.resolve[0], "resolve", alarm.resolve[2]))
        if alarm.cancel:
            steps.append((alarm.cancel[1], alarm.cancel[0], "cancel", alarm.cancel[2]))
        for dt, who, action, extra in sorted(steps):
            decided = decide_response(
                state,
                Respond(
                    incident_id=opened.incident_id,
                    responder=who,
                    action=action,  # type: ignore[arg-type]
                    at=after(dt),
                    category=extra if action == "resolve" else None,
                    reason=extra if action == "cancel" else None,
                ),
            )
            for event in decided:
                state = evolve(state, event)
            out += decided
        return out

    def many(self, alarms: Sequence[Alarm]) -> list[Event]:
        """Events of several alarms in time order (as the log interleaves them)."""
        events = [e for alarm in alarms for e in self.events(alarm)]
        return sorted(events, key=lambda e: e.at)
