"""FastStream subscribers: bind the handlers to the provisioned streams and subjects.

Invariants:
- every JetStream subscriber binds to a consumer our code provisioned (`declare=False`) and
  acknowledges manually, only after the handler's effect is durable; FastStream's default for
  JetStream (terminate on any exception) would lose a message on a transient error;
- the fan-out's triggers are pushed (a deliver group shared by every process): no fetch round
  trip between a stored alarm and its handler. The server hands over up to 4,096 unacknowledged
  triggers, more than the pool rings at once (512): the rest wait in the pool's queue, in order,
  told in progress like the running ones, while an alarm (`urgent`, told by the event's type
  header) is rung at once, beyond the pool's limit. So a new alarm never waits for a backlog of
  escalations to be rung (as after a restart with a thousand deadlines overdue), and the
  subscription's callback never waits for a place. Its subscription is nats-py's own, on the
  broker's connection, bound
  once the broker has started (`bind_raw`): FastStream's dispatch of each message (its context,
  exit stack and middlewares: ~0.2-0.35 ms of CPU a call, docs/benchmarks.md) did nothing this
  handler uses, which takes the raw message and acknowledges it itself;
- calls over NATS are answered concurrently (a bounded pool, like the HTTP door): a core
  subscription's callbacks run one after another, which held every call behind the log round
  trips of the one before it; the answer goes out on the service's own connection, which is
  still open while the pools drain at a stop;
- the other consumers pull one message at a time (nats-py's batch fetch waits for the whole
  batch or its timeout, which would delay an alarm); each message is handed to a bounded task pool
  and acknowledged when its work is done, so a slow receiver never holds up the next alarm;
- one policy for every JetStream message (`consume`): a message the handler cannot read is
  acknowledged (it would never become readable) after it is copied to `dispatch.dead.<source>`
  with the reason in a header; the log unreachable nacks it with a delay that doubles with each
  delivery and is spread at random (`retry_delay`: retries of a burst never come back together),
  any other error too (one doubling more, logged with its traceback), an incident that does not exist acknowledges it
  (logged); nothing else is ever dropped;
- subscribers know no handler: each message becomes a bus message (`dispatch.handlers.messages`,
  a delivery job, a fired timer), and the composition root's table says who handles it;
- FastStream's per-message logging is off (it costs a third of the throughput on this path), and
  so is its dependency injection: a handler gets the raw nats message from a decoder (injecting
  `NatsMessage` runs a synchronous resolver in a thread pool for every message, which doubled
  the hop from the log to the handler: docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import structlog
import structlog.contextvars
from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsBroker, PullSub
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatch.domain.drill import DRILL_TIMER
from dispatch.domain.errors import DomainError, NotFound
from dispatch.domain.incident import TIMERS
from dispatch.events.codec import UnknownEvent
from dispatch.events.jobs import DeliveryJob, job_decoder
from dispatch.events.subjects import (
    CALL_INGRESS,
    DELIVERY_STREAM,
    EVENTS_STREAM,
    INCIDENTS_ALL,
    TIMERS_FIRED_ALL,
    TIMERS_STREAM,
    deliver_subject,
)
from dispatch.handlers.bus import MessageBus
from dispatch.handlers.messages import CallRequest, CallResult, Trigger
from dispatch.handlers.pool import TaskPool
from dispatch.observe.metrics import Metrics
from dispatch.store.deadletter import dead_letter as store_dead_letter
from dispatch.store.eventstore import StoreUnavailable, recorded_from
from dispatch.store.provision import FANOUT, TIMERS_CONSUMER, delivery_consumer
from dispatch.store.timers import TimerDue, Timers, settling, timer_decoder

log = structlog.get_logger(__name__)

M = TypeVar("M")
_call_decoder = msgspec.json.Decoder(CallRequest)
_encoder = msgspec.json.Encoder()
RETRY_DELAY = 2.0
RETRY_DELAY_MAX = 10.0
FANOUT_IN_FLIGHT = 512
TIMERS_IN_FLIGHT = TIMERS_CONSUMER.max_ack_pending
LOCAL_DEADLINES_IN_FLIGHT = 128
DELIVERY_IN_FLIGHT = 512
INGRESS_IN_FLIGHT = 256
CATCH_UP_WAVE_S = 1.0
UNREADABLE = (UnknownEvent, msgspec.DecodeError, msgspec.ValidationError)


async def raw_message(msg: StreamMessage[Msg]) -> Msg:
    """FastStream decoder: the handler gets the nats-py message itself."""
    return msg.raw_message


async def dead_letter(broker: NatsBroker, source: str, raw: Msg, reason: str, metrics: Metrics | None = None) -> None:
    """Copy an unreadable message to `dispatch.dead.<source>` with the reason."""
    if metrics is not None:
        metrics.dead_letters.labels(source).inc()

    async def publish(subject: str, data: bytes, headers: dict[str, str]) -> None:
        await broker.publish(data, subject, headers=headers)

    await store_dead_letter(publish, source, raw, reason)


async def consume(
    raw: Msg,
    *,
    source: str,
    decode: Callable[[Msg], M],
    handle: Callable[[M], Awaitable[Any]],
    broker: NatsBroker,
    metrics: Metrics | None,
) -> None:
    """The ack policy, once: decode, handle, then acknowledge, nack or dead-letter (see the module
    docstring). A handler that returns a float asks for the message again in that many seconds
    (a delivery job not yet due)."""
    try:
        message = decode(raw)
    except UNREADABLE as exc:
        await dead_letter(broker, source, raw, str(exc), metrics)
        await _ack(raw)
        return
    incident_id = _incident_of(message)
    try:
        with structlog.contextvars.bound_contextvars(incident_id=incident_id):
            due_in = await handle(message)
    except StoreUnavailable as exc:
        delay = retry_delay(_delivered(raw))
        log.warning(f"{source}.retry", error=str(exc), delay_s=round(delay, 2))
        await _nak(raw, delay)
        return
    except NotFound as exc:
        log.error(f"{source}.unknown_incident", incident_id=incident_id, error=exc.reason)
    except Exception:
        log.exception(f"{source}.failed", incident_id=incident_id)
        await _nak(raw, retry_delay(_delivered(raw) + 1))
        return
    if isinstance(due_in, float):
        await _nak(raw, due_in)
    else:
        await _ack(raw)


def retry_delay(delivered: int) -> float:
    """How long a message the log could not take (its `delivered`-th delivery) waits before it comes
    back: RETRY_DELAY doubled per delivery up to RETRY_DELAY_MAX, each spread at random over half to
    one and a half of it. Under a burst the log answers late, and a fixed delay brought every message
    that timed out back at once, into the same queue (a retry storm: 34,759 retries of 5,000 alarms)."""
    nominal = min(RETRY_DELAY_MAX, RETRY_DELAY * 2.0 ** (max(1, delivered) - 1))
    return nominal * random.uniform(0.5, 1.5)


def _delivered(raw: Msg) -> int:
    try:
        return int(raw.metadata.num_delivered)
    except Exception:
        return 1


def _incident_of(message: object) -> str | None:
    if isinstance(message, Trigger):
        message = message.record.event
    value = getattr(message, "incident_id", None)
    return value if isinstance(value, str) else None


def _trigger(raw: Msg) -> Trigger:
    return Trigger(record=recorded_from(raw), redelivered=raw.metadata.num_delivered > 1)


def _timer(raw: Msg) -> TimerDue:
    due = timer_decoder.decode(raw.data)
    if due.timer not in TIMERS and due.timer != DRILL_TIMER:
        raise msgspec.ValidationError(f"unknown timer {due.timer!r}")
    return due


def _job(raw: Msg) -> DeliveryJob:
    return job_decoder.decode(raw.data)


@dataclass(frozen=True, slots=True)
class RawPush:
    """A push consumer bound with nats-py, not FastStream: the durable `queue` (its deliver group)
    on `stream`, each message handed to `handle` as it is."""

    subject: str
    queue: str
    stream: str
    handle: Callable[[Msg], Awaitable[None]]


async def bind_raw(broker: NatsBroker, subscriptions: list[RawPush]) -> None:
    """Subscribe each on the started broker's connection (closed with it at `broker.stop()`)."""
    connection = broker._connection
    if connection is None:
        raise RuntimeError("the broker is not connected")
    js = connection.jetstream()
    for sub in subscriptions:
        await js.subscribe(
            sub.subject, queue=sub.queue, durable=sub.queue, stream=sub.stream, cb=sub.handle, manual_ack=True
        )


def build_broker(
    servers: list[str],
    *,
    bus: MessageBus,
    channels: list[str],
    pools: dict[str, TaskPool],
    raw: list[RawPush],
    connect: dict[str, object] | None = None,
    metrics: Metrics | None = None,
    replies: NATS | None = None,
    deadlines: Timers | None = None,
    urgent: Callable[[dict[str, str] | None], bool] | None = None,
) -> NatsBroker:
    """Register every subscriber; `pools` receives the task pools so the service can drain them;
    `raw` receives the subscriptions to bind with `bind_raw` once the broker has started.

    `replies` is the connection that answers NATS calls; it must outlive the broker's, which
    closes before the pools drain (a call finishing during a stop is still answered). `deadlines`:
    the timers whose in-process clock this process runs (`local_deadlines`), to skip a fired
    schedule already handled here. `urgent(headers)`: a stored trigger that rings an alarm, which
    the fan-out rings at once however many others wait."""
    broker = NatsBroker(
        servers,
        logger=None,
        apply_types=False,
        name="dispatch-handlers",
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        graceful_timeout=10.0,
        **(connect or {}),  # type: ignore[arg-type]
    )
    deliveries = JStream(DELIVERY_STREAM, declare=False)
    alerts = pools.setdefault("fanout", TaskPool(FANOUT_IN_FLIGHT, "fanout"))

    def consumer(source: str, decode: Callable[[Msg], Any]) -> Callable[[Msg], Awaitable[None]]:
        return lambda raw: consume(raw, source=source, decode=decode, handle=bus.handle, broker=broker, metrics=metrics)

    fan_out = consumer("fanout", _trigger)

    async def on_alert(raw: Msg) -> None:
        await alerts.offer(lambda: fan_out(raw), raw, urgent=urgent is not None and urgent(raw.headers))

    raw.append(RawPush(INCIDENTS_ALL, FANOUT.durable, EVENTS_STREAM, on_alert))

    for name in channels:
        pool = pools.setdefault(f"deliver.{name}", TaskPool(DELIVERY_IN_FLIGHT, f"deliver.{name}"))
        broker.subscriber(
            deliver_subject(name),
            decoder=raw_message,
            stream=deliveries,
            durable=delivery_consumer(name).durable,
            pull_sub=PullSub(batch_size=1, timeout=5.0),
            ack_policy=AckPolicy.MANUAL,
            title=f"deliver.{name}",
            description=f"Delivery jobs for the {name} channel",
        )(_pooled(pool, consumer(f"deliver.{name}", _job), f"deliver_{name}"))

    timers = pools.setdefault("timers", TaskPool(TIMERS_IN_FLIGHT, "timers"))

    async def fired(due: TimerDue) -> Any:
        if deadlines is not None:
            if deadlines.catching_up and deadlines.on_due is not None and not deadlines.known_here(due):
                deadlines.on_due(due)  # joins the catch-up in its due-time order
            if await deadlines.already_handled(due):
                deadlines.forget(due)  # the server's firing is the last of this deadline to come here
                return None
            with settling(deadlines.handling_here(due)):  # the in-process clock, if not there yet, skips it
                return await bus.handle(due)
        return await bus.handle(due)

    def timer_fired(raw: Msg) -> Awaitable[None]:
        return consume(raw, source="timers", decode=_timer, handle=fired, broker=broker, metrics=metrics)

    @broker.subscriber(
        TIMERS_FIRED_ALL,
        decoder=raw_message,
        stream=JStream(TIMERS_STREAM, declare=False),
        queue=TIMERS_CONSUMER.durable,
        ack_policy=AckPolicy.MANUAL,
        title="timers",
        description="Deadlines fired by the server's message schedules -> escalation decisions",
    )
    async def on_timer(raw: Msg) -> None:
        await timers.submit(lambda: timer_fired(raw), raw)

    ingress = pools.setdefault("ingress", TaskPool(INGRESS_IN_FLIGHT, "ingress"))

    async def answer_call(raw: Msg) -> None:
        try:
            req = _call_decoder.decode(raw.data)
        except msgspec.ValidationError as exc:
            await dead_letter(broker, "ingress.call", raw, str(exc), metrics)
            reply = _encoder.encode({"error": f"invalid call: {exc}"})
        except msgspec.DecodeError as exc:
            await dead_letter(broker, "ingress.call", raw, str(exc), metrics)
            reply = _encoder.encode({"error": f"invalid JSON: {exc}"})
        else:
            reply = await _call_reply(bus, req)
        if raw.reply:
            try:
                await (replies.publish(raw.reply, reply) if replies is not None else raw.respond(reply))
            except Exception as exc:
                log.warning("ingress.reply_failed", error=str(exc) or type(exc).__name__)

    @broker.subscriber(
        CALL_INGRESS,
        decoder=raw_message,
        queue="dispatch-ingress",
        no_reply=True,
        title="ingress.call",
        description="A call as JSON (same body as POST /v1/calls); replies with the incident",
    )
    async def on_call(raw: Msg) -> None:
        await ingress.submit(lambda: answer_call(raw))

    return broker


class LocalDeadlines:
    """The in-process deadline clock's handler (`Timers.on_due`) and the catch-up at start.

    Each deadline is handled in `pool` as a fired schedule would be; once handled, the server's
    firing of the same deadline is acknowledged with nothing more to do (`Timers.already_handled`).
    A failure is logged and left to the server's schedule, which fires the same deadline later.
    `catch_up` takes the deadlines that fell due while no process handled them, and hands them over
    in due-time order: those due within the same second at once, each later second only once the
    earlier ones are decided, so a deadline overdue longer is never decided after one due later;
    a deadline that falls due on the in-process clock meanwhile (an escalate deadline set by a
    caught-up ack deadline, already past) joins the catch-up in its order.

    `held`: the catch-up is gathered but starts only at `release` (the service calls it once it takes
    calls: a start behind a thousand overdue escalations took 6-14 s instead of 1-3 s, and new alarms
    go first anyway, `dispatch.handlers.priority`)."""

    def __init__(self, bus: MessageBus, pool: TaskPool, timers: Timers, *, held: bool = False) -> None:
        self.bus = bus
        self.pool = pool
        self.timers = timers
        self._go = asyncio.Event()
        if not held:
            self._go.set()
        self._running: set[asyncio.Task[None]] = set()
        self._overdue: list[tuple[datetime, int, TimerDue, asyncio.Future[bool]]] = []
        self._order = itertools.count()
        self._catching_up = False
        timers.on_due = self.on_due

    def on_due(self, due: TimerDue) -> None:
        """A deadline of the in-process clock fell due: handle it in the pool (during a catch-up, in
        its due-time order among the overdue ones)."""
        settled = self.timers.handling_here(due)
        if self._catching_up:
            heapq.heappush(self._overdue, (due.due_at, next(self._order), due, settled))
            return
        self._spawn(self.pool.submit(functools.partial(self._handle, due, settled)))

    def resume(self, fired: list[TimerDue], pending: list[TimerDue]) -> None:
        """At start: the fired deadlines no process acknowledged and the pending schedules already
        due are caught up (`catch_up`); the other pending schedules go on the in-process clock."""
        now = datetime.now(UTC)
        self.catch_up([*fired, *(due for due in pending if due.due_at <= now)])
        for due in pending:
            if due.due_at > now:
                self.timers.keep(due)

    def catch_up(self, overdue: list[TimerDue]) -> None:
        """Handle these overdue deadlines in due-time order (see the class docstring), in the background;
        the server's deliveries of them wait for their outcome."""
        unique = {(d.incident_id, d.timer, d.due_at): d for d in overdue}
        ordered = sorted(unique.values(), key=lambda d: d.due_at)
        for due in ordered:
            heapq.heappush(self._overdue, (due.due_at, next(self._order), due, self.timers.handling_here(due)))
        if not self._catching_up:
            self._catching_up = self.timers.catching_up = True
            self._spawn(self._waves())

    def release(self) -> None:
        """Start the catch-up held so far (see the class docstring)."""
        self._go.set()

    async def _waves(self) -> None:
        try:
            await self._go.wait()
            if self._overdue:
                first = min(self._overdue)[0]
                log.info("timers.catch_up", overdue=len(self._overdue), since=first.isoformat())
            while self._overdue:
                first = self._overdue[0][0]
                wave: list[tuple[TimerDue, asyncio.Future[bool]]] = []
                while self._overdue and (self._overdue[0][0] - first).total_seconds() < CATCH_UP_WAVE_S:
                    _, _, due, settled = heapq.heappop(self._overdue)
                    wave.append((due, settled))
                for due, settled in wave:
                    await self.pool.submit(functools.partial(self._handle, due, settled))
                await asyncio.gather(*(asyncio.shield(settled) for _, settled in wave))
        finally:
            self._catching_up = self.timers.catching_up = False

    async def _handle(self, due: TimerDue, settled: asyncio.Future[bool]) -> None:
        try:
            with settling(settled), structlog.contextvars.bound_contextvars(incident_id=due.incident_id):
                await self.bus.handle(due)
        except Exception as exc:
            log.warning("timers.local_failed", timer=due.timer, error=str(exc) or type(exc).__name__)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)


def _pooled(pool: TaskPool, work: Callable[[Msg], Awaitable[None]], name: str) -> Callable[[Msg], Awaitable[None]]:
    async def submit(raw: Msg) -> None:
        await pool.submit(lambda: work(raw), raw)

    submit.__name__ = name
    return submit


async def _call_reply(bus: MessageBus, req: CallRequest) -> bytes:
    try:
        result: CallResult = await bus.handle(req)
    except StoreUnavailable as exc:
        return _encoder.encode({"error": str(exc), "retry": True})
    except DomainError as exc:
        return _encoder.encode({"error": exc.reason})
    except Exception:
        log.exception("ingress.call_failed", call_id=req.call_id)
        return _encoder.encode({"error": "internal error, retry", "retry": True})
    return _encoder.encode(result)


async def _ack(raw: Msg) -> None:
    try:
        await raw.ack()
    except Exception as exc:
        log.warning("ack_failed", error=str(exc) or type(exc).__name__)


async def _nak(raw: Msg, delay: float) -> None:
    try:
        await raw.nak(delay=delay)
    except Exception as exc:
        log.warning("nak_failed", error=str(exc) or type(exc).__name__)
