"""Fan-out: an alarm decision rings every recipient on their channels at once, in this process.

Triggers are the incident decisions that reach people: AlarmRaised and UnregisteredCall (the
recipients are in the event), CallRepeated (the re-alerted), IncidentEscalated and NeighboursAlerted
(the alerted: the station, the county, the neighbouring groups' leaders and assistants), the
first ResponderAccepted and IncidentCovered (the caller is told help is coming) and
IncidentCancelled (everyone alerted is told). Which channels reach a person follows their role and
village (`ChannelConfig`). The fan-out also sets the incident's deadlines as server-side schedules:
ack when it is raised (the ack deadline, when it passes uncovered, sets the escalate deadline:
`EscalationService`), arrival when it is covered; the trigger is acknowledged only after they are
set, so no alarm is ever left without its deadlines.

The first attempt is made here, not through the work queue: one hop from the log to the phones
(a queue hop costs an fsynced publish and a second consumer). Targets that fail transiently are
queued on DISPATCH_DELIVERY for retries, which any process's delivery worker takes. The first
attempt's outcome, carrying `handed_at`, is also its targets' notice: one append per job, not two
(every append to the log is fsynced, in the stream's one write path; `docs/benchmarks.md`).

Invariants:
- the trigger's stream sequence is its round: every target's Idempotency-Key contains it, so a
  repeated attempt carries the same key;
- the trigger is acknowledged only after every target has an outcome recorded or a retry job
  queued: a crash in between redelivers the trigger, which rings again exactly the targets that
  have no recorded outcome for that round (at least once, never lost);
- a redelivered trigger of a closed incident rings nobody, except the cancellation itself; one
  redelivered while this process still rings it (its ack wait ran out under load, as after a
  restart with 1,000 escalations overdue: 186 webhooks sent twice) waits for that ringing to end,
  then rings only the targets with no outcome recorded;
- a recipient no channel reaches (none configured, or routed to none) is never silently left out:
  it is recorded as DeliveryFailed on the pseudo-channel `none` (permanent, no `handed_at`, so never
  counted as notified), once per round, with an error log (`fanout.not_rung`);
- an escalation this process decided is rung from the incident as it decided it (`IncidentCache`, at
  exactly the escalation's sequence), not read again from the log; a redelivered trigger always
  reads the log (the outcomes recorded for its round). An opened incident is remembered there
  for its deadlines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import structlog

from dispatch.channels.base import AlarmWork, Channel, Hold, recorded_address
from dispatch.channels.routing import ChannelConfig
from dispatch.domain.delivery import NO_CHANNEL, NO_CHANNEL_CONFIGURED, NO_CHANNEL_ROUTED, RecordAttempt, decide_attempt
from dispatch.domain.incident import TIER_REASONS, Alert, IncidentState, alert_for, fold, timer_due
from dispatch.domain.messages import alert_text_en_for, alert_text_for, spoken_text_for
from dispatch.events import msgids
from dispatch.events.jobs import Deadline, DeliveryJob, JobKind, Target
from dispatch.events.model import (
    CallRepeated,
    IncidentCancelled,
    IncidentCovered,
    IncidentEscalated,
    IncidentOpened,
    NeighboursAlerted,
    Person,
    ResponderAccepted,
    Unreached,
)
from dispatch.events.subjects import notice_subject
from dispatch.handlers.aggregates import IncidentCache, Incidents
from dispatch.handlers.bus import MessageBus
from dispatch.handlers.eager import gather_now, settled, start
from dispatch.handlers.messages import Trigger
from dispatch.handlers.uow import Loaded
from dispatch.ids import stable_key
from dispatch.observe.metrics import Metrics
from dispatch.store.eventstore import EventStore, Outgoing, Recorded, opened
from dispatch.store.timers import Timers

log = structlog.get_logger(__name__)


TIMER_OF_REASON = {reason: timer for timer, reason in TIER_REASONS.items()}
TRIGGERS = (
    IncidentOpened,
    CallRepeated,
    IncidentEscalated,
    NeighboursAlerted,
    ResponderAccepted,
    IncidentCovered,
    IncidentCancelled,
)


def job_kind(alert: Alert) -> JobKind:
    """What a job of this alert asks of its targets (an alarm, a repeat, an update...)."""
    if alert.reason == "raised":
        return "alarm" if alert.registered else "unregistered"
    return alert.reason


class FanOut:
    """Turns each alerting decision into delivery jobs, sent on the bus at once, and sets deadlines."""

    def __init__(
        self,
        store: EventStore,
        bus: MessageBus,
        channels: Sequence[Channel],
        *,
        timers: Timers,
        public_url: str,
        routing: ChannelConfig | None = None,
        metrics: Metrics | None = None,
        cache: IncidentCache | None = None,
        priority: AlarmWork | None = None,
    ) -> None:
        self.priority = priority
        self.metrics = metrics
        self.cache = cache
        self._ringing: dict[int, asyncio.Future[None]] = {}
        self.routing = routing or ChannelConfig()
        self.store = store
        self.incidents = Incidents(store)
        self.bus = bus
        self.timers = timers
        self.channels = list(channels)
        self.public_url = public_url.rstrip("/")

    def answer_url(self, incident_id: str) -> str:
        """Where an alert's recipient answers."""
        return f"{self.public_url}/v1/incidents/{incident_id}/responses"

    async def on_trigger(self, trigger: Trigger) -> int:
        """A stored decision: ring everyone it reaches; return how many targets were handed to channels."""
        return await self.handle(await opened(trigger.record), redelivered=trigger.redelivered)

    async def handle(self, rec: Recorded, *, redelivered: bool = False) -> int:
        """Ring everyone a trigger reaches; return how many targets were handed to channels (broadcasts
        wait meanwhile: `priority`). The same trigger handed over again while this process still rings
        it waits for that, then rings only the targets that still have no outcome."""
        earlier = self._ringing.get(rec.seq)
        if earlier is not None:
            await asyncio.shield(earlier)
            redelivered = True
        ringing = self._ringing[rec.seq] = asyncio.get_running_loop().create_future()
        try:
            return await self._held(rec, redelivered=redelivered)
        finally:
            if self._ringing.get(rec.seq) is ringing:
                del self._ringing[rec.seq]
            ringing.set_result(None)

    async def _held(self, rec: Recorded, *, redelivered: bool) -> int:
        if self.priority is None or not isinstance(rec.event, TRIGGERS):
            return await self._handle(rec, redelivered=redelivered, held=None)
        held = self.priority.hold()
        try:
            return await self._handle(rec, redelivered=redelivered, held=held)
        finally:
            held.release()

    async def _handle(self, rec: Recorded, *, redelivered: bool, held: Hold | None) -> int:
        """As `handle`; `held` (broadcasts waiting) is released once every send has started: each
        send then holds the broadcasts back itself while it hands its alert to the channel."""
        trigger = rec.event
        if not isinstance(trigger, TRIGGERS):
            return 0
        if isinstance(trigger, ResponderAccepted) and not trigger.first:
            return 0
        opened = trigger if isinstance(trigger, IncidentOpened) else None
        state: IncidentState | None = None
        done: frozenset[tuple[int, str, str]] = frozenset()
        urgency = 1
        if self.cache is not None and not redelivered:
            if opened is not None:
                first = fold([opened])
                if first is not None:
                    self.cache.remember(Loaded(first, rec.subject, rec.seq))
            elif isinstance(trigger, IncidentEscalated | NeighboursAlerted):
                state = self.cache.after(rec)
            else:
                self.cache.seen(trigger.incident_id, rec.seq)
        if state is not None:
            done, urgency = state.outcomes, state.urgency
            opened = state.opened
        elif opened is None or redelivered:
            state = await self.incidents.get(trigger.incident_id)
            if redelivered and state.closed and not isinstance(trigger, IncidentCancelled):
                return 0
            opened, done, urgency = state.opened, state.outcomes, state.urgency
        deadlines = (
            [self._schedule_ack(opened)]
            if isinstance(trigger, IncidentOpened)
            else [self._schedule_arrival(state)]
            if isinstance(trigger, IncidentCovered) and state is not None
            else []
        )
        alert = alert_for(opened, trigger, state, urgency)
        if alert is None:
            if isinstance(trigger, IncidentOpened):
                log.error(
                    "fanout.nobody_to_alert",
                    incident_id=trigger.incident_id,
                    hint="a call from an unknown number with no duty desk: set DISPATCH_DUTY_DESK",
                )
            await gather_now(*deadlines)
            return 0
        unrouted: list[Person] = []
        jobs = self.jobs_for(alert, rec, done, unrouted, deadline_of(trigger, state))
        if unrouted and (rec.seq, NO_CHANNEL, "") not in done:
            deadlines.append(self._record_unrouted(alert, rec, unrouted))
        started = [start(self.bus.handle(job)) for job in jobs] + [start(d) for d in deadlines]
        if held is not None:
            held.release()
        await settled(started)
        targets = sum(len(j.targets) for j in jobs)
        log.info("fanout.rung", incident_id=alert.incident_id, round=rec.seq, reason=alert.reason, targets=targets)
        return targets

    async def _record_unrouted(self, alert: Alert, rec: Recorded, people: list[Person]) -> None:
        """The recipients no channel reaches, recorded as not notified (DeliveryFailed on NO_CHANNEL)."""
        why = NO_CHANNEL_CONFIGURED if not self.channels else NO_CHANNEL_ROUTED
        log.error(
            "fanout.not_rung",
            incident_id=alert.incident_id,
            round=rec.seq,
            reason=alert.reason,
            people=len(people),
            why=why,
            hint="nobody is handed this alert: configure a channel (DISPATCH_CHANNELS_FILE, DISPATCH_WEBHOOK_URLS)"
            if not self.channels
            else "DISPATCH_CHANNELS_FILE [routes] give these roles no channel here",
        )
        if self.metrics is not None:
            self.metrics.deliveries.labels(NO_CHANNEL, "permanent").inc(len(people))
        failures = tuple(Unreached(phone=p.phone, kind="permanent", reason=why) for p in people)
        command = RecordAttempt(
            incident_id=alert.incident_id, channel=NO_CHANNEL, round=rec.seq, attempt=1, failures=failures
        )
        key = stable_key(alert.incident_id, rec.seq, NO_CHANNEL)
        for event in decide_attempt(command, rec.event.at):
            await self.store.append([Outgoing(notice_subject(alert.incident_id), event, msgids.delivery_failed(key))])

    async def _schedule_ack(self, opened: IncidentOpened) -> None:
        await self.timers.schedule(opened.incident_id, "ack", opened.at + timedelta(seconds=opened.ack_deadline_s))

    async def _schedule_arrival(self, state: IncidentState) -> None:
        due = timer_due(state, "arrival")
        if due is not None and not state.closed and state.first_arrival_at is None:
            await self.timers.schedule(state.id, "arrival", due)

    def reaches(self, channel: str, role: str, alert: Alert) -> bool:
        """Whether `channel` carries this alert to a person of `role` (the channel routing)."""
        if alert.reason == "caller_update" and channel == "voice" and not self.routing.caller_voice_updates:
            return False
        allowed = self.routing.channels_for(role, alert.village)
        return allowed is None or channel in allowed

    def jobs_for(
        self,
        alert: Alert,
        rec: Recorded,
        done: frozenset[tuple[int, str, str]],
        unrouted: list[Person] | None = None,
        deadline: Deadline | None = None,
    ) -> list[DeliveryJob]:
        """One job per channel holding every target of the alert that has no outcome in this round;
        the recipients no channel reaches at all are added to `unrouted`; an escalation's jobs name
        the `deadline` it answers."""
        message, message_en, spoken = alert_text_for(alert), alert_text_en_for(alert), spoken_text_for(alert)
        jobs = []
        routed: set[str] = set()
        for channel in self.channels:
            addressed = [
                (person, address)
                for person in alert.recipients
                if self.reaches(channel.name, person.role, alert)
                for address in channel.targets(person, alert.village)
            ]
            routed.update(person.phone for person, _ in addressed)
            targets = tuple(
                Target(
                    recipient=person,
                    address=address,
                    key=stable_key(alert.incident_id, rec.seq, person.phone, channel.name, address),
                )
                for person, address in addressed
                if (rec.seq, channel.name, recorded_address(address)) not in done
            )
            if targets:
                jobs.append(
                    DeliveryJob(
                        key=stable_key(alert.incident_id, rec.seq, channel.name),
                        incident_id=alert.incident_id,
                        round=rec.seq,
                        kind=job_kind(alert),
                        channel=channel.name,
                        targets=targets,
                        village=alert.village,
                        group=alert.group,
                        caller=alert.caller,
                        urgency=alert.urgency,
                        message=message,
                        message_en=message_en,
                        answer_url=self.answer_url(alert.incident_id),
                        spoken=spoken,
                        console_url=f"{self.public_url}/console/#/incidents/{alert.incident_id}",
                        raised_at=alert.raised_at,
                        appended_at=rec.time,
                        deadline=deadline,
                        drill=alert.drill,
                    )
                )
        if unrouted is not None:
            unrouted.extend(p for p in alert.recipients if p.phone not in routed)
        return jobs


def deadline_of(trigger: object, state: IncidentState | None) -> Deadline | None:
    """The deadline an escalation answers (none for an officer found unreachable, or another trigger)."""
    if not isinstance(trigger, IncidentEscalated) or state is None:
        return None
    timer = TIMER_OF_REASON.get(trigger.reason)
    due = timer_due(state, timer) if timer is not None else None
    return None if timer is None or due is None else Deadline(timer=timer, tier=trigger.tier, due_at=due)
