"""Delivery: hand one job to its channel and record the outcome.

Invariants:
- transient failures are retried with exponential backoff and jitter (a Retry-After given by the
  receiver is honoured) up to `max_attempts`; then DeliveryFailed{exhausted};
- permanent failures are not retried: DeliveryFailed{permanent};
- the outcome event is appended before the job is acknowledged; if that append fails the job is
  delivered again later (same Idempotency-Key), never dropped.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import structlog

from dispatch.channels.base import Channel, Delivered, DeliveryJob, Permanent, Transient
from dispatch.clock import Clock, utcnow
from dispatch.events.model import DeliveryFailed, DeliverySucceeded, FailureKind
from dispatch.events.subjects import incident_subject
from dispatch.metrics import Metrics
from dispatch.store.eventstore import EventStore, Outgoing

log = structlog.get_logger(__name__)


class DeliveryWorker:
    def __init__(
        self,
        store: EventStore,
        channels: Mapping[str, Channel],
        *,
        metrics: Metrics,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.channels = channels
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.clock = clock

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, 600.0)
        base = min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1))
        return float(base * random.uniform(0.8, 1.2))

    async def handle(self, job: DeliveryJob, attempt: int) -> float | None:
        """Deliver once; return None when done (acknowledge) or the delay before the next attempt."""
        channel = self.channels.get(job.channel)
        if channel is None:
            await self._failed(job, attempt, "permanent", f"channel {job.channel!r} is not configured")
            return None
        if attempt == 1:
            self.metrics.handoff.labels(job.channel).observe(max(0.0, (self.clock() - job.appended_at).total_seconds()))
        outcome = await channel.send(job)
        if isinstance(outcome, Delivered):
            await self.store.append(
                [
                    Outgoing(
                        incident_subject(job.incident_id),
                        DeliverySucceeded(
                            at=self.clock(),
                            incident_id=job.incident_id,
                            phone=job.recipient.phone,
                            channel=job.channel,
                            target=job.target,
                            round=job.round,
                            attempt=attempt,
                        ),
                        f"dlv:{job.key}:ok",
                    )
                ]
            )
            self.metrics.notifications.labels(job.channel, "delivered").inc()
            return None
        if isinstance(outcome, Transient) and attempt < self.max_attempts:
            self.metrics.notifications.labels(job.channel, "retry").inc()
            delay = self.backoff(attempt, outcome.retry_after)
            log.warning(
                "delivery.retry",
                incident_id=job.incident_id,
                channel=job.channel,
                attempt=attempt,
                reason=outcome.reason,
                delay_s=round(delay, 2),
            )
            return delay
        kind: FailureKind = "permanent" if isinstance(outcome, Permanent) else "exhausted"
        await self._failed(job, attempt, kind, outcome.reason)
        return None

    async def _failed(self, job: DeliveryJob, attempt: int, kind: FailureKind, reason: str) -> None:
        await self.store.append(
            [
                Outgoing(
                    incident_subject(job.incident_id),
                    DeliveryFailed(
                        at=self.clock(),
                        incident_id=job.incident_id,
                        phone=job.recipient.phone,
                        channel=job.channel,
                        target=job.target,
                        round=job.round,
                        attempt=attempt,
                        kind=kind,
                        reason=reason,
                    ),
                    f"dlv:{job.key}:failed",
                )
            ]
        )
        self.metrics.notifications.labels(job.channel, kind).inc()
        log.error(
            "delivery.failed",
            incident_id=job.incident_id,
            channel=job.channel,
            kind=kind,
            reason=reason,
            attempt=attempt,
        )
