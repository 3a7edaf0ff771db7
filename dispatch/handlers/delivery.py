"""Delivery: ring every target of a job at once through its channel and record the outcomes.

Invariants:
- all targets of a job are handed to the channel concurrently (ring-all), the moment the job
  is taken; a job whose `not_before` lies ahead is put back until then, untouched;
- transient failures are retried with exponential backoff and jitter (a Retry-After from the
  receiver is honoured) up to `max_attempts`, as a new job holding only those targets;
  then DeliveryFailed{exhausted}; permanent failures are not retried: DeliveryFailed{permanent};
- the retry job is queued and the outcome events appended before the job is acknowledged; if
  either fails the whole job comes back (same Idempotency-Keys), never dropped;
- a first attempt's outcomes carry `handed_at` and are also the notice of their targets; the
  targets it leaves to a retry get a RespondersNotified, so everyone rung counts as notified;
- a channel that raises is treated as a transient failure of that target;
- a retry that asks for an answer (alarm, repeat, escalation, unregistered) is withdrawn, not rung,
  for a target who has answered meanwhile or once the incident is closed: DeliveryFailed{withdrawn};
  when the incident cannot be read, the target is rung (a needless ring beats a missed alarm);
- an outcome is logged at the level an operator acts on: permanent error, exhausted warning,
  withdrawn info (`FAILURE_LEVEL`);
- the outcome events are decided by the domain (`decide_attempt`) and appended as facts (no
  expectation: they never conflict), one attempt's in one atomic batch (one write to the log, not
  one per event); each stored DeliveryFailed is published on the bus, where
  the escalation decides whether no officer can be reached any more.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from datetime import datetime, timedelta

import msgspec
import structlog

from dispatch.channels.base import (
    AlarmWork,
    Channel,
    Delivered,
    Outcome,
    Permanent,
    Transient,
    Withdrawn,
    recorded_address,
)
from dispatch.clock import Clock, utcnow
from dispatch.domain.delivery import RecordAttempt, decide_attempt
from dispatch.events import msgids
from dispatch.events.jobs import DeliveryJob, Target
from dispatch.events.model import (
    DeliveryFailed,
    DeliverySucceeded,
    Event,
    FailureKind,
    Reached,
    RespondersNotified,
    Unreached,
)
from dispatch.events.subjects import notice_subject
from dispatch.handlers.aggregates import Incidents
from dispatch.handlers.bus import MessageBus
from dispatch.handlers.eager import settled, start
from dispatch.ids import stable_key
from dispatch.observe.metrics import Metrics
from dispatch.store.eventstore import EventStore, Outgoing
from dispatch.store.jobs import JobQueue

log = structlog.get_logger(__name__)

ANSWER_SEEKING = frozenset({"alarm", "repeat", "escalation", "unregistered"})
# What an operator is woken for: a permanent failure (a wrong number in the roster, a receiver that
# refuses us) needs someone to fix it; retries spent are handled by the deadlines and escalation; a
# ring withdrawn because the person answered or the incident closed is the system working.
FAILURE_LEVEL: dict[FailureKind, str] = {"permanent": "error", "exhausted": "warning", "withdrawn": "info"}


class DeliveryWorker:
    """Rings a job's targets through its channel and records what happened."""

    def __init__(
        self,
        store: EventStore,
        jobs: JobQueue,
        channels: Mapping[str, Channel],
        *,
        metrics: Metrics,
        bus: MessageBus | None = None,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        clock: Clock = utcnow,
        priority: AlarmWork | None = None,
    ) -> None:
        self.priority = priority
        self.incidents = Incidents(store)
        self.bus = bus or MessageBus()
        self.store = store
        self.jobs = jobs
        self.channels = channels
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.clock = clock

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """base x 2^(attempt-1), stretched by up to half at random; never sooner than the nominal delay,
        so `max_attempts` attempts span at least base x (2^(max_attempts-1) - 1) seconds (30 s with
        the defaults: a receiver down for 30 s still gets every delivery)."""
        if retry_after is not None:
            return min(retry_after, 600.0)
        base = min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1))
        return float(base * random.uniform(1.0, 1.5))

    async def handle(self, job: DeliveryJob) -> float | None:
        """Deliver one job; None when it is done (acknowledge), else seconds until it is due (broadcasts
        wait while it rings: `priority`)."""
        now = self.clock()
        if job.not_before is not None and job.not_before > now:
            return (job.not_before - now).total_seconds()
        return await self._deliver(job, now)

    async def _deliver(self, job: DeliveryJob, now: datetime) -> float | None:
        channel = self.channels.get(job.channel)
        if channel is None:
            reason = f"channel {job.channel!r} is not configured"
            await self._record(job, [(t, Permanent(reason)) for t in job.targets], [])
            return None
        withdrawn = await self._withdrawn(job)
        gone = {t.key for t, _ in withdrawn}
        live = tuple(t for t in job.targets if t.key not in gone)
        started: list[float] = []
        sends = [start(self._send(channel, job, t, started)) for t in live]
        if job.attempt > 1:
            self.metrics.delivery_retries.labels(job.channel).inc(len(live))
        if job.attempt == 1:
            handed = self.clock()
            self.metrics.fanout.labels(job.channel).observe(max(0.0, (handed - job.appended_at).total_seconds()))
            if job.deadline is not None:
                late = max(0.0, (handed - job.deadline.due_at).total_seconds())
                self.metrics.deadline_lateness.labels(job.deadline.timer, str(job.deadline.tier)).observe(late)
        outcomes = await settled(sends)
        if job.attempt == 1 and len(started) > 1:
            self.metrics.fanout_spread.labels(job.channel).observe(max(started) - min(started))
        retry: list[tuple[Target, Transient]] = [
            (t, o)
            for t, o in zip(live, outcomes, strict=True)
            if isinstance(o, Transient) and job.attempt < self.max_attempts
        ]
        if retry:
            delay = max(self.backoff(job.attempt, o.retry_after) for _, o in retry)
            await self.jobs.enqueue(
                [
                    msgspec.structs.replace(
                        job,
                        key=stable_key(job.key, job.attempt + 1),
                        targets=tuple(t for t, _ in retry),
                        attempt=job.attempt + 1,
                        not_before=self.clock() + timedelta(seconds=delay),
                    )
                ]
            )
            log.warning(
                "delivery.retry",
                incident_id=job.incident_id,
                channel=job.channel,
                attempt=job.attempt,
                targets=len(retry),
                reason=retry[0][1].reason,
                delay_s=round(delay, 2),
            )
        retried = {t.key for t, _ in retry}
        done = [(t, o) for t, o in zip(live, outcomes, strict=True) if t.key not in retried]
        await self._record(job, done + withdrawn, retry, handed_at=now if job.attempt == 1 else None)
        return None

    async def _withdrawn(self, job: DeliveryJob) -> list[tuple[Target, Outcome]]:
        """The targets of a retry no longer worth ringing, each with the reason."""
        if job.attempt == 1 or job.kind not in ANSWER_SEEKING:
            return []
        try:
            state = await self.incidents.get(job.incident_id)
        except Exception:
            log.warning("delivery.state_unreadable", incident_id=job.incident_id, channel=job.channel)
            return []
        if state.closed:
            return [(t, Withdrawn("incident closed")) for t in job.targets]
        answered = {phone for phone, r in state.responders.items() if r.answered or r.arrived_at is not None}
        return [(t, Withdrawn("answered")) for t in job.targets if t.recipient.phone in answered]

    async def _send(self, channel: Channel, job: DeliveryJob, target: Target, started: list[float]) -> Outcome:
        """Hand one target to its channel; broadcasts wait meanwhile (`priority`), unless the channel
        marks the hand-off itself (voice: only its request, not the wait for the call's outcome)."""
        started.append(time.perf_counter())
        own = self.priority is not None and not getattr(channel, "marks_priority", False)
        held = self.priority.hold() if own and self.priority is not None else None
        try:
            return await channel.send(job, target)
        except Exception as exc:
            log.exception("delivery.channel_raised", channel=job.channel, incident_id=job.incident_id)
            return Transient(f"{type(exc).__name__}")
        finally:
            if held is not None:
                held.release()

    async def _record(
        self,
        job: DeliveryJob,
        done: list[tuple[Target, Outcome]],
        retry: list[tuple[Target, Transient]],
        *,
        handed_at: datetime | None = None,
    ) -> None:
        """Append the outcomes (decided by `decide_attempt`) and publish the failures on the bus."""
        reached = tuple(
            Reached(phone=t.recipient.phone, address=recorded_address(t.address))
            for t, o in done
            if isinstance(o, Delivered)
        )
        failures = tuple(
            Unreached(
                phone=t.recipient.phone,
                address=recorded_address(t.address),
                kind=failure_kind(o),
                reason=o.reason,
            )
            for t, o in done
            if not isinstance(o, Delivered)
        )
        retried = tuple(t.recipient.phone for t, _ in retry)
        command = RecordAttempt(
            incident_id=job.incident_id,
            channel=job.channel,
            round=job.round,
            attempt=job.attempt,
            reached=reached,
            failures=failures,
            retried=retried,
            handed_at=handed_at,
            simulated=bool(getattr(self.channels.get(job.channel), "simulated", False)),
        )
        events = decide_attempt(command, self.clock())
        subject = notice_subject(job.incident_id)
        await self.store.append([Outgoing(subject, e, _msg_id(job.key, e)) for e in events])
        self._count(job, reached, failures, retried)
        for event in events:
            if isinstance(event, DeliveryFailed):
                await self.bus.publish(event)

    def _count(
        self, job: DeliveryJob, reached: tuple[Reached, ...], failures: tuple[Unreached, ...], retried: tuple[str, ...]
    ) -> None:
        if reached:
            self.metrics.deliveries.labels(job.channel, "delivered").inc(len(reached))
        for failure in failures:
            self.metrics.deliveries.labels(job.channel, failure.kind).inc()
            getattr(log, FAILURE_LEVEL[failure.kind])(
                "delivery.withdrawn" if failure.kind == "withdrawn" else "delivery.failed",
                incident_id=job.incident_id,
                channel=job.channel,
                kind=failure.kind,
                reason=failure.reason,
                attempt=job.attempt,
            )
        if retried:
            self.metrics.deliveries.labels(job.channel, "retry").inc(len(retried))


def _msg_id(job_key: str, event: Event) -> str:
    if isinstance(event, DeliverySucceeded):
        return msgids.delivered(job_key)
    if isinstance(event, DeliveryFailed):
        return msgids.delivery_failed(job_key)
    assert isinstance(event, RespondersNotified)
    return msgids.notified(job_key, event.phones)


def failure_kind(outcome: Permanent | Transient | Withdrawn) -> FailureKind:
    """How a target was given up on: permanent, withdrawn, or exhausted (retries spent)."""
    if isinstance(outcome, Permanent):
        return "permanent"
    if isinstance(outcome, Withdrawn):
        return "withdrawn"
    return "exhausted"
