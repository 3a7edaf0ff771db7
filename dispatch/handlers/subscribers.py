"""FastStream subscribers: bind the handlers to the provisioned streams and subjects.

Invariants:
- every JetStream subscriber binds to a consumer our code provisioned (`declare=False`) and
  acknowledges manually, only after the handler's effect is durable; FastStream's default for
  JetStream (terminate on any exception) would lose a message on a transient error;
- a message the handler cannot read is acknowledged (it would never become readable) after it is
  copied to `dispatch.dead.<source>` with the reason in a header; nothing else is ever dropped:
  errors nack with a delay and the message comes back;
- FastStream's per-message logging is off (it costs a third of the throughput on this path).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage

from dispatch.channels.base import job_decoder
from dispatch.domain.errors import DomainError
from dispatch.events.codec import UnknownEvent
from dispatch.events.subjects import (
    CALL_INGRESS,
    DEAD_LETTER_PREFIX,
    DELIVERY_STREAM,
    EVENTS_STREAM,
    INCIDENTS_ALL,
    deliver_subject,
)
from dispatch.handlers.calls import CallRequest, CallService
from dispatch.handlers.delivery import DeliveryWorker
from dispatch.handlers.fanout import FanOut
from dispatch.store.eventstore import StoreUnavailable, recorded_from
from dispatch.store.provision import FANOUT, delivery_consumer

log = structlog.get_logger(__name__)

_call_decoder = msgspec.json.Decoder(CallRequest)
_encoder = msgspec.json.Encoder()
RETRY_DELAY = 2.0


async def dead_letter(broker: NatsBroker, source: str, msg: NatsMessage, reason: str) -> None:
    raw = msg.raw_message
    headers = dict(raw.headers or {})
    headers["Dispatch-Dead-Reason"] = reason[:500]
    headers["Dispatch-Dead-Subject"] = raw.subject
    try:
        await broker.publish(raw.data, f"{DEAD_LETTER_PREFIX}.{source}", headers=headers)
    except Exception as exc:
        log.error("dead_letter.publish_failed", source=source, error=str(exc))
    log.error("dead_letter", source=source, reason=reason)


def build_broker(
    servers: list[str],
    *,
    fanout: FanOut,
    delivery: DeliveryWorker,
    calls: CallService,
    channels: list[str],
    connect: dict[str, object] | None = None,
) -> NatsBroker:
    broker = NatsBroker(
        servers,
        logger=None,
        name="dispatch-handlers",
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        graceful_timeout=10.0,
        **(connect or {}),  # type: ignore[arg-type]
    )
    events = JStream(EVENTS_STREAM, declare=False)
    deliveries = JStream(DELIVERY_STREAM, declare=False)

    @broker.subscriber(
        INCIDENTS_ALL,
        stream=events,
        durable=FANOUT.durable,
        pull_sub=PullSub(batch_size=32, timeout=1.0),
        ack_policy=AckPolicy.MANUAL,
        title="fanout",
        description="Incident events -> delivery jobs for every recipient on every channel",
    )
    async def on_incident_event(msg: NatsMessage) -> None:
        try:
            rec = recorded_from(msg.raw_message)
        except UnknownEvent as exc:
            await dead_letter(broker, "fanout", msg, str(exc))
            await msg.ack()
            return
        try:
            await fanout.handle(rec)
        except StoreUnavailable as exc:
            log.warning("fanout.retry", seq=rec.seq, error=str(exc))
            await msg.nack(delay=RETRY_DELAY)
            return
        except Exception:
            log.exception("fanout.failed", seq=rec.seq)
            await msg.nack(delay=RETRY_DELAY * 2)
            return
        await msg.ack()

    for name in channels:
        broker.subscriber(
            deliver_subject(name),
            stream=deliveries,
            durable=delivery_consumer(name).durable,
            pull_sub=PullSub(batch_size=64, timeout=1.0),
            ack_policy=AckPolicy.MANUAL,
            title=f"deliver.{name}",
            description=f"Delivery jobs for the {name} channel",
        )(_delivery_handler(broker, delivery, name))

    @broker.subscriber(
        CALL_INGRESS,
        queue="dispatch-ingress",
        title="ingress.call",
        description="A call as JSON (same body as POST /v1/calls); replies with the incident",
    )
    async def on_call(msg: NatsMessage) -> bytes:
        try:
            req = _call_decoder.decode(msg.raw_message.data)
        except msgspec.ValidationError as exc:
            await dead_letter(broker, "ingress.call", msg, str(exc))
            return _encoder.encode({"error": f"invalid call: {exc}"})
        except msgspec.DecodeError as exc:
            await dead_letter(broker, "ingress.call", msg, str(exc))
            return _encoder.encode({"error": f"invalid JSON: {exc}"})
        try:
            result = await calls.call(req)
        except StoreUnavailable as exc:
            return _encoder.encode({"error": str(exc), "retry": True})
        except DomainError as exc:
            return _encoder.encode({"error": exc.reason})
        return _encoder.encode(result)

    return broker


def _delivery_handler(
    broker: NatsBroker, worker: DeliveryWorker, channel: str
) -> Callable[[NatsMessage], Awaitable[None]]:
    async def on_delivery_job(msg: NatsMessage) -> None:
        raw = msg.raw_message
        try:
            job = job_decoder.decode(raw.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await dead_letter(broker, f"deliver.{channel}", msg, str(exc))
            await msg.ack()
            return
        try:
            delay = await worker.handle(job, raw.metadata.num_delivered)
        except StoreUnavailable as exc:
            log.warning("delivery.outcome_not_recorded", incident_id=job.incident_id, error=str(exc))
            await msg.nack(delay=RETRY_DELAY)
            return
        except Exception:
            log.exception("delivery.crashed", incident_id=job.incident_id, channel=channel)
            await msg.nack(delay=RETRY_DELAY * 2)
            return
        if delay is None:
            await msg.ack()
        else:
            await msg.nack(delay=delay)

    on_delivery_job.__name__ = f"deliver_{channel}"
    return on_delivery_job
