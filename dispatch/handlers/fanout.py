"""Fan-out: an alarm decision rings every recipient on every channel at once, in this process.

Triggers are the incident decisions that alert people: AlarmRaised and UnregisteredCall (the
recipients are in the event), CallRepeated (the re-alerted) and IncidentEscalated (the alerted).
The fan-out also sets the incident's deadlines as server-side schedules: ack and escalate when it
is raised, arrival when it is covered; the trigger is acknowledged only after they are set, so no
alarm is ever left without its deadlines.

The first attempt is made here, not through the work queue: one hop from the log to the phones
(a queue hop costs an fsynced publish and a second consumer). Targets that fail transiently are
queued on DISPATCH_DELIVERY for retries, which any process's delivery worker takes.

Invariants:
- the trigger's stream sequence is its round: every target's Idempotency-Key contains it, so a
  repeated attempt carries the same key;
- the trigger is acknowledged only after every target has an outcome recorded or a retry job
  queued: a crash in between redelivers the trigger, which rings again exactly the targets that
  have no recorded outcome for that round (at least once, never lost);
- a redelivered trigger of a closed incident rings nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import structlog

from dispatch.channels.base import Channel, DeliveryJob, JobKind, Target
from dispatch.clock import Clock, utcnow
from dispatch.domain.incident import Alert, Timer, alert_for, timer_due
from dispatch.domain.messages import alert_text_en_for, alert_text_for
from dispatch.events.model import CallRepeated, IncidentCovered, IncidentEscalated, IncidentOpened, RespondersNotified
from dispatch.events.subjects import notice_subject
from dispatch.handlers.delivery import DeliveryWorker
from dispatch.handlers.responses import IncidentReader
from dispatch.ids import stable_key
from dispatch.store.eventstore import EventStore, Outgoing, Recorded
from dispatch.store.timers import Timers

log = structlog.get_logger(__name__)


def job_kind(alert: Alert) -> JobKind:
    if alert.reason == "repeat":
        return "repeat"
    return "alarm" if alert.registered else "unregistered"


class FanOut:
    def __init__(
        self,
        store: EventStore,
        delivery: DeliveryWorker,
        channels: Sequence[Channel],
        *,
        timers: Timers,
        public_url: str,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.reader = IncidentReader(store)
        self.delivery = delivery
        self.timers = timers
        self.channels = list(channels)
        self.public_url = public_url.rstrip("/")
        self.clock = clock

    def answer_url(self, incident_id: str) -> str:
        return f"{self.public_url}/v1/incidents/{incident_id}/responses"

    async def handle(self, rec: Recorded, *, redelivered: bool = False) -> int:
        """Ring everyone a trigger alerts; return how many targets were handed to channels."""
        trigger = rec.event
        if isinstance(trigger, IncidentCovered):
            await self._schedule_arrival(trigger.incident_id)
            return 0
        if not isinstance(trigger, IncidentOpened | CallRepeated | IncidentEscalated):
            return 0
        opened = trigger if isinstance(trigger, IncidentOpened) else None
        done: frozenset[tuple[int, str, str]] = frozenset()
        urgency = 1
        if opened is None or redelivered:
            state, _ = await self.reader.load(trigger.incident_id)
            if redelivered and state.closed:
                return 0
            opened, done, urgency = state.opened, state.outcomes, state.urgency
        deadlines = (
            [self._schedule(opened, "ack"), self._schedule(opened, "escalate")]
            if isinstance(trigger, IncidentOpened)
            else []
        )
        alert = alert_for(opened, trigger, urgency)
        if alert is None:
            await asyncio.gather(*deadlines)
            return 0
        jobs = self.jobs_for(alert, rec, done)
        now = self.clock()
        notices = [
            RespondersNotified(
                at=now,
                incident_id=alert.incident_id,
                channel=job.channel,
                round=rec.seq,
                phones=tuple(dict.fromkeys(t.recipient.phone for t in job.targets)),
            )
            for job in jobs
        ]
        subject = notice_subject(alert.incident_id)
        await asyncio.gather(
            *deadlines,
            *(self.delivery.handle(job) for job in jobs),
            *(
                self.store.append([Outgoing(subject, n, f"notify:{n.incident_id}:{n.round}:{n.channel}")])
                for n in notices
            ),
        )
        targets = sum(len(j.targets) for j in jobs)
        log.info("fanout.rung", incident_id=alert.incident_id, round=rec.seq, reason=alert.reason, targets=targets)
        return targets

    async def _schedule(self, opened: IncidentOpened, timer: Timer) -> None:
        seconds = opened.ack_deadline_s if timer == "ack" else opened.escalate_after_s
        await self.timers.schedule(opened.incident_id, timer, opened.at + timedelta(seconds=seconds))

    async def _schedule_arrival(self, incident_id: str) -> None:
        state, _ = await self.reader.load(incident_id)
        due = timer_due(state, "arrival")
        if due is not None and not state.closed and state.first_arrival_at is None:
            await self.timers.schedule(incident_id, "arrival", due)

    def jobs_for(self, alert: Alert, rec: Recorded, done: frozenset[tuple[int, str, str]]) -> list[DeliveryJob]:
        message, message_en = alert_text_for(alert), alert_text_en_for(alert)
        jobs = []
        for channel in self.channels:
            targets = tuple(
                Target(
                    recipient=person,
                    address=address,
                    key=stable_key(alert.incident_id, rec.seq, person.phone, channel.name, address),
                )
                for person in alert.recipients
                for address in channel.targets(person)
                if (rec.seq, channel.name, address) not in done
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
                        raised_at=alert.raised_at,
                        appended_at=rec.time,
                    )
                )
        return jobs
