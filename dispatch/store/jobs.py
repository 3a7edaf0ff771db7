"""The delivery work queue (stream DISPATCH_DELIVERY, `dispatch.deliver.<channel>`).

Invariants:
- the jobs of one fan-out are enqueued in one atomic batch: the whole group is queued together
  or not at all;
- each job's `Nats-Msg-Id` is its idempotency key, so enqueueing the same fan-out again within
  the duplicate window queues nothing twice (the server answers duplicate, 10201 for a batch);
- an unreachable server is StoreUnavailable; retrying is always safe.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeout

from dispatch.events.jobs import DeliveryJob, job_encoder
from dispatch.events.subjects import deliver_subject
from dispatch.store.batch import MAX_BATCH, publish_batch, publish_one
from dispatch.store.eventstore import ERR_BATCH_DUPLICATE_MSG_ID, AppendRejected, StoreUnavailable


class JobQueue:
    """Queues delivery jobs on DISPATCH_DELIVERY for any process's delivery worker."""

    def __init__(self, nc: NATS, *, timeout: float = 3.0) -> None:
        self.nc = nc
        self.timeout = timeout

    async def enqueue(self, jobs: list[DeliveryJob]) -> None:
        """Queue jobs, each on its channel's subject, with its key as the message id."""
        if not jobs:
            return
        if not self.nc.is_connected:
            raise StoreUnavailable("delivery queue unavailable: not connected to NATS")
        messages = [(deliver_subject(j.channel), job_encoder.encode(j), {"Nats-Msg-Id": j.key}) for j in jobs]
        for start in range(0, len(messages), MAX_BATCH):
            chunk = messages[start : start + MAX_BATCH]
            try:
                if len(chunk) == 1:
                    subject, body, headers = chunk[0]
                    ack = await publish_one(self.nc, subject, body, headers, timeout=self.timeout)
                else:
                    ack = await publish_batch(self.nc, chunk, timeout=self.timeout)
            except (NatsTimeout, NoRespondersError, ConnectionClosedError, OutboundBufferLimitError) as exc:
                raise StoreUnavailable(f"delivery queue unavailable: {type(exc).__name__}") from exc
            error = ack.get("error")
            if error is not None and error.get("err_code") != ERR_BATCH_DUPLICATE_MSG_ID:
                raise AppendRejected(f"{error.get('err_code')}: {error.get('description')}")
