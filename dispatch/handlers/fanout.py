"""Fan-out: on an alarm, every recipient on every channel is queued at once — the group rings together.

Invariants:
- the trigger's stream sequence is the alert round: the same trigger never alerts anyone twice
  (ResponderNotified records the round; job keys contain it, so a redelivered trigger re-queues
  only what the duplicate window has not seen, with the same idempotency keys);
- jobs are queued before ResponderNotified is recorded, and the trigger is acknowledged only
  after both: a crash in between repeats the fan-out, never loses it;
- a closed incident alerts nobody.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from dispatch.channels.base import Channel, DeliveryJob, JobKind
from dispatch.clock import Clock, utcnow
from dispatch.domain.incident import alert_targets
from dispatch.domain.messages import alert_text, alert_text_en
from dispatch.events.model import CallRepeated, IncidentOpened, ResponderNotified, UnregisteredCall
from dispatch.events.subjects import incident_subject
from dispatch.handlers.responses import IncidentReader
from dispatch.ids import stable_key
from dispatch.metrics import Metrics
from dispatch.store.eventstore import EventStore, Outgoing, Recorded
from dispatch.store.jobs import JobQueue

log = structlog.get_logger(__name__)


class FanOut:
    def __init__(
        self,
        store: EventStore,
        jobs: JobQueue,
        channels: Sequence[Channel],
        *,
        public_url: str,
        metrics: Metrics,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.reader = IncidentReader(store)
        self.jobs = jobs
        self.channels = list(channels)
        self.public_url = public_url.rstrip("/")
        self.metrics = metrics
        self.clock = clock

    async def handle(self, rec: Recorded) -> int:
        """React to one incident event; return how many delivery jobs were queued."""
        trigger = rec.event
        if not isinstance(trigger, IncidentOpened | CallRepeated):
            return 0
        state, _ = await self.reader.load(trigger.incident_id)
        targets = alert_targets(state, trigger, rec.seq)
        if not targets:
            return 0
        opened = state.opened
        repeat = trigger if isinstance(trigger, CallRepeated) else None
        kind: JobKind = "repeat" if repeat else ("unregistered" if isinstance(opened, UnregisteredCall) else "alarm")
        message, message_en = alert_text(opened, repeat), alert_text_en(opened)
        now = self.clock()
        jobs: list[DeliveryJob] = []
        notified: list[ResponderNotified] = []
        for person in targets:
            for channel in self.channels:
                targets_on_channel = channel.targets(person)
                for target in targets_on_channel:
                    jobs.append(
                        DeliveryJob(
                            key=stable_key(state.id, rec.seq, person.phone, channel.name, target),
                            incident_id=state.id,
                            round=rec.seq,
                            kind=kind,
                            channel=channel.name,
                            target=target,
                            recipient=person,
                            village=opened.village,
                            group=opened.group,
                            caller=repeat.caller if repeat else opened.caller,
                            urgency=state.urgency,
                            message=message,
                            message_en=message_en,
                            answer_url=f"{self.public_url}/v1/incidents/{state.id}/responses",
                            raised_at=state.raised_at,
                            appended_at=rec.time,
                        )
                    )
                if targets_on_channel:
                    notified.append(
                        ResponderNotified(
                            at=now,
                            incident_id=state.id,
                            phone=person.phone,
                            role=person.role,
                            channel=channel.name,
                            round=rec.seq,
                        )
                    )
        await self.jobs.enqueue(jobs)
        self.metrics.fanout.observe(max(0.0, (self.clock() - rec.time).total_seconds()))
        subject = incident_subject(state.id)
        await self.store.append(
            [Outgoing(subject, event, f"notify:{state.id}:{rec.seq}:{i}") for i, event in enumerate(notified)]
        )
        log.info("fanout.queued", incident_id=state.id, round=rec.seq, recipients=len(targets), jobs=len(jobs))
        return len(jobs)
