"""Broadcasts: start one (resolve the villages' members, decide, queue its chunks), send the chunks at
low priority, record receipts.

Priority: an alarm is never delayed by a broadcast.
- a broadcast's chunks go on their own work queue (stream DISPATCH_BULK, `dispatch.bulk.<channel>`),
  taken by their own consumer (`bulk_<channel>_v1`), one chunk at a time per process; the alarms'
  fan-out rings in process and its retries have their own queue (DISPATCH_DELIVERY), so no alarm
  waits behind a broadcast in any queue;
- before each number of a chunk the sender yields to alarms (`AlarmPriority.yield_to_alarms`): while
  this process decides a call, fans an alarm out or hands an alert to a channel, no broadcast request
  starts;
- the sender talks to the gateway through its own HTTP client (`max_connections` small), so the
  alarms' connections to the gateway are never taken; it sends at most `rate` requests per second per
  channel (a token bucket, `dispatch.domain.ratelimit`) and, when the gateway answers 429 or 503 with
  Retry-After, pauses that channel for as long (the rest of the chunk is retried later);
- a broadcast voice call is handed (2xx from the gateway) and not waited for: its keypad digit comes
  back as a callback naming the broadcast in its context.

Invariants:
- a chunk's outcome (BroadcastHanded: handed numbers and permanent or exhausted failures) is appended
  before the chunk is acknowledged; a chunk whose process died is taken again after `BULK_ACK_WAIT_S`
  (a live sender says it is still at work every `BULK_PROGRESS_S` and after every wait for alarms, so
  its chunk is never taken from it); a chunk redelivered after a crash rings only who its broadcast has
  no outcome for on that channel (at least once, each number handed at most once per outcome recorded);
- transient failures are retried as a new chunk holding only them, with backoff, up to `max_attempts`;
- starting a broadcast again with the same id decides nothing and queues its chunks again (same message
  ids; a chunk taken twice rings only who is left): a client may retry a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout

from dispatch.channels.base import Delivered, Outcome, Permanent, Transient
from dispatch.channels.gateway import SMS_PATH, VOICE_PATH, GatewayClient, broadcast_leg
from dispatch.channels.http import Unreachable, http_outcome
from dispatch.clock import Clock, utcnow
from dispatch.domain.broadcast import (
    BroadcastState,
    RecordReceipt,
    StartBroadcast,
    choose,
    decide_broadcast,
    evolve_broadcast,
    spoken_text,
    undelivered,
    warning_text,
)
from dispatch.domain.directory import Directory
from dispatch.domain.errors import NotFound
from dispatch.domain.ratelimit import RateLimiter
from dispatch.events import msgids
from dispatch.events.model import BroadcastEvent, BroadcastHanded, Event, Person, Unreached
from dispatch.events.subjects import BROADCASTS_ALL, BULK_STREAM, broadcast_out_subject, broadcast_subject, bulk_subject
from dispatch.handlers.messages import HeardBroadcast
from dispatch.handlers.uow import Loaded, UnitOfWork
from dispatch.ids import stable_key
from dispatch.store.batch import MAX_BATCH, publish_batch
from dispatch.store.eventstore import AppendRejected, EventStore, Outgoing, StoreUnavailable
from dispatch.store.giveway import GiveWay
from dispatch.store.provision import BULK_PROGRESS_S, bulk_consumer

log = structlog.get_logger(__name__)

CHUNK = 100
GROUPS_PAGE = 200
BROADCAST_KEYPAD = {"1": "heard", "9": "repeat"}
RECENT = timedelta(hours=72)


class _Hold:
    __slots__ = ("owner",)

    def __init__(self, owner: AlarmPriority) -> None:
        self.owner: AlarmPriority | None = owner

    def release(self) -> None:
        if self.owner is not None:
            self.owner._release()
            self.owner = None


class AlarmPriority:
    """How many alarm deliveries this process is making; broadcasts wait while there are any, and
    while `also` counts alarm work elsewhere (the calls being decided and the alarms' fan-outs that
    `dispatch.handlers.priority.Priority` counts; polled every POLL_S)."""

    POLL_S = 0.005

    def __init__(self, also: Callable[[], int] | None = None) -> None:
        self.busy = 0
        self.also = also
        self._idle: asyncio.Event | None = None
        self.yields = 0

    def _event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            self._idle.set()
        return self._idle

    def hold(self) -> _Hold:
        """An alarm in progress until the hold is released (once)."""
        self.busy += 1
        self._event().clear()
        return _Hold(self)

    def _release(self) -> None:
        self.busy -= 1
        if self.busy == 0:
            self._event().set()

    @contextlib.contextmanager
    def alarm(self) -> Iterator[None]:
        """Mark an alarm delivery in progress for the duration of the block."""
        held = self.hold()
        try:
            yield
        finally:
            held.release()

    def _others(self) -> int:
        return self.also() if self.also is not None else 0

    async def yield_to_alarms(self) -> bool:
        """Return at once when no alarm is being delivered or decided, else once none is; True if it waited."""
        if self.busy == 0 and self._others() == 0:
            return False
        self.yields += 1
        while self.busy or self._others():
            if self.busy:
                await self._event().wait()
            else:
                await asyncio.sleep(self.POLL_S)
        return True


class BulkJob(msgspec.Struct, frozen=True, kw_only=True):
    """One chunk of a broadcast on one channel, as it travels on DISPATCH_BULK."""

    broadcast_id: str
    channel: str
    chunk: int
    targets: tuple[Person, ...]
    attempt: int = 1
    not_before: datetime | None = None

    @property
    def key(self) -> str:
        """The chunk's message id: one chunk of an attempt is queued once."""
        return f"bulk:{self.broadcast_id}:{self.channel}:{self.chunk}:{self.attempt}"


bulk_encoder = msgspec.json.Encoder()
bulk_decoder = msgspec.json.Decoder(BulkJob)


class Broadcasts:
    """Every broadcast folded in memory, caught up from the log on each read (an incremental scan of
    `dispatch.evt.broadcast.>`): the unit of work's aggregate, and what reports and receipts read."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.states: dict[str, BroadcastState] = {}
        self.decision_seq: dict[str, int] = {}
        self._scanned = 0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Fold every broadcast event stored since the last refresh."""
        async with self._lock:
            way = GiveWay()
            for rec in await self.store.scan(BROADCASTS_ALL, after=self._scanned):
                await way.turn()
                event = rec.event
                if isinstance(event, BroadcastEvent):
                    state = self.states.setdefault(event.broadcast_id, BroadcastState(event.broadcast_id))
                    evolve_broadcast(state, event)
                    if rec.subject == broadcast_subject(event.broadcast_id):
                        self.decision_seq[event.broadcast_id] = rec.seq
                self._scanned = rec.seq

    async def get(self, broadcast_id: str) -> BroadcastState:
        """The broadcast as the log holds it now; NotFound if it was never started."""
        await self.refresh()
        state = self.states.get(broadcast_id)
        if state is None or not state.exists:
            raise NotFound(f"no broadcast {broadcast_id}")
        return state

    async def load(self, key: str) -> Loaded[BroadcastState]:
        """The broadcast's state and its decision subject's last sequence."""
        await self.refresh()
        state = self.states.get(key) or BroadcastState(key)
        return Loaded(state, broadcast_subject(key), self.decision_seq.get(key, 0))

    def subject_of(self, key: str, event: Event) -> str:
        """Decisions on the broadcast's subject; chunk outcomes on its `.out` subject."""
        return broadcast_out_subject(key) if isinstance(event, BroadcastHanded) else broadcast_subject(key)

    async def awaiting_receipt(self, phone: str, now: datetime) -> BroadcastState | None:
        """The most recent broadcast of the last RECENT that addressed `phone` and has no receipt from it."""
        await self.refresh()
        found = [
            s
            for s in self.states.values()
            if s.started is not None and now - s.started.at < RECENT and phone in s.recipients and phone not in s.heard
        ]
        return max(found, key=lambda s: s.started.at if s.started else now) if found else None

    async def listed(self, villages: frozenset[str] | None) -> list[BroadcastState]:
        """Every broadcast touching `villages` (None: all), newest first."""
        await self.refresh()
        shown = [
            s
            for s in self.states.values()
            if s.started is not None and (villages is None or set(s.started.villages) & villages)
        ]
        return sorted(shown, key=lambda s: s.started.at if s.started else utcnow(), reverse=True)


class BulkQueue:
    """Queues broadcast chunks on DISPATCH_BULK (never on the alarms' DISPATCH_DELIVERY)."""

    def __init__(self, nc: NATS, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout

    async def enqueue(self, jobs: Sequence[BulkJob]) -> None:
        """Queue chunks, each with its key as the message id, in atomic batches."""
        if not jobs:
            return
        if not self.nc.is_connected:
            raise StoreUnavailable("broadcast queue unavailable: not connected to NATS")
        way = GiveWay()  # a county's 2,000 chunks hold 100,000 people to encode
        for start in range(0, len(jobs), MAX_BATCH):
            messages = []
            for job in jobs[start : start + MAX_BATCH]:
                await way.turn()
                messages.append((bulk_subject(job.channel), bulk_encoder.encode(job), {"Nats-Msg-Id": job.key}))
            try:
                ack = await publish_batch(self.nc, messages, timeout=self.timeout)
            except Exception as exc:
                raise StoreUnavailable(f"broadcast queue unavailable: {type(exc).__name__}") from exc
            error = ack.get("error")
            if error is not None and error.get("err_code") != 10201:
                raise AppendRejected(f"{error.get('err_code')}: {error.get('description')}")


def chunks_of(state: BroadcastState, channels: Sequence[str], size: int = CHUNK) -> Iterator[BulkJob]:
    """The broadcast's chunks for `channels`, each holding only who that channel has no outcome for."""
    people = list(state.recipients.values())
    for channel in channels:
        for i in range(0, len(people), size):
            left = undelivered(state, channel, people[i : i + size])
            if left:
                yield BulkJob(broadcast_id=state.id, channel=channel, chunk=i // size, targets=left)


class BroadcastService:
    """Starts broadcasts and records receipts, through the unit of work."""

    def __init__(
        self,
        uow: UnitOfWork,
        broadcasts: Broadcasts,
        directory: Directory,
        queue: BulkQueue,
        *,
        channels: Sequence[str],
    ) -> None:
        self.uow = uow
        self.broadcasts = broadcasts
        self.directory = directory
        self.queue = queue
        self.channels = tuple(channels)

    async def recipients(self, villages: Sequence[str]) -> tuple[Person, ...]:
        """Every number bound in `villages` now, once, by number (`recipients_of`): a county's groups
        walked a page at a time, giving way between pages (the whole walk of 10,000 groups in one go
        held every alarm of the process)."""
        wanted = frozenset(villages)
        chosen: dict[str, Person] = {}
        way = GiveWay()
        after: tuple[str, str] | None = None
        more = True
        while more:
            await way.turn()
            page, more = self.directory.page_groups(villages=wanted, after=after, limit=GROUPS_PAGE)
            if not page:
                break
            choose(chosen, ((g.village, p) for g in page for p in g.members.values()), wanted)
            after = (page[-1].village, page[-1].group)
        await way.turn()
        phones = sorted(chosen)
        await way.turn()
        return tuple(chosen[phone] for phone in phones)

    async def start(self, command: StartBroadcast) -> BroadcastState:
        """Decide the broadcast (recipients from the directory) and queue its chunks; the state after."""
        if not command.channels:
            command = msgspec.structs.replace(command, channels=self.channels)
        unknown = [c for c in command.channels if c not in self.channels]
        if unknown:
            from dispatch.domain.errors import InvalidCommand

            raise InvalidCommand(
                f"channels {unknown} cannot carry a broadcast here: configured are {list(self.channels) or 'none'}"
            )
        full = msgspec.structs.replace(command, recipients=await self.recipients(command.villages))
        key = command.broadcast_id
        await self.uow.decide(
            self.broadcasts,
            key,
            lambda state, now: decide_broadcast(state, full, now),
            msgids.indexed(f"broadcast:{key}"),
        )
        state = await self.broadcasts.get(key)
        started = state.started
        assert started is not None
        jobs = []
        way = GiveWay()  # a county's 2,000 chunks are cut between the alarms, not in one hold of the loop
        for job in chunks_of(state, started.channels):
            await way.turn()
            jobs.append(job)
        await self.queue.enqueue(jobs)
        log.info("broadcast.started", broadcast_id=key, villages=list(started.villages), total=started.total)
        return state

    async def heard(self, message: HeardBroadcast) -> str | None:
        """A recipient's receipt (to the broadcast named, else to the latest awaiting one); the broadcast
        id, or None when no broadcast awaits this number's receipt."""
        broadcast_id = message.broadcast_id
        if not broadcast_id:
            waiting = await self.broadcasts.awaiting_receipt(message.phone, utcnow())
            if waiting is None:
                return None
            broadcast_id = waiting.id
        await self.receipt(
            RecordReceipt(broadcast_id=broadcast_id, phone=message.phone, via=message.via, actor=message.actor)
        )
        return broadcast_id

    async def receipt(self, command: RecordReceipt) -> bool:
        """Record that a recipient heard the warning; False when it was already counted."""
        decided = await self.uow.decide(
            self.broadcasts,
            command.broadcast_id,
            lambda state, now: decide_broadcast(state, command, now),
            lambda i, e: f"heard:{command.broadcast_id}:{command.phone}",
        )
        return bool(decided.events)


@dataclass
class SenderStats:
    """What a sender did: targets handed, jobs done, waits for alarms, pauses for the gateway."""

    handed: int = 0
    jobs: int = 0
    yields: int = 0
    paused: int = 0


class BulkSender:
    """Takes broadcast chunks from DISPATCH_BULK and hands them to the gateway, yielding to alarms."""

    def __init__(
        self,
        nc: NATS,
        store: EventStore,
        broadcasts: Broadcasts,
        gateway: GatewayClient,
        *,
        channels: Sequence[str],
        callback_url: str,
        priority: AlarmPriority,
        rate: float = 200.0,
        parallel: int = 16,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        clock: Clock = utcnow,
    ) -> None:
        self.nc = nc
        self.store = store
        self.broadcasts = broadcasts
        self.gateway = gateway
        self.channels = tuple(channels)
        self.callback_url = callback_url
        self.priority = priority
        self.limiter = RateLimiter(rate, max(1.0, rate / 10))
        self.parallel = parallel
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.clock = clock
        self.queue = BulkQueue(nc)
        self.paused_until: dict[str, float] = {}
        self.stats = SenderStats()
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Any] = []
        self._stopping = False

    async def start(self) -> None:
        """Bind each channel's consumer and start taking chunks."""
        js = self.nc.jetstream()
        for channel in self.channels:
            spec = bulk_consumer(channel)
            sub = await js.pull_subscribe_bind(spec.durable, stream=BULK_STREAM)
            self._subs.append(sub)
            self._tasks.append(asyncio.get_running_loop().create_task(self._run(channel, sub)))

    async def stop(self) -> None:
        """Stop taking chunks (a chunk in hand is redelivered later if not acknowledged)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        # A pull subscription left open holds the connection's drain for its whole timeout (30 s):
        # its pending queue is never joined, fetch having taken its messages with next_msg.
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    async def _run(self, channel: str, sub: Any) -> None:
        while not self._stopping:
            try:
                msgs = await sub.fetch(1, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                continue
            except Exception as exc:
                log.warning("broadcast.fetch_failed", channel=channel, error=type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                try:
                    job = bulk_decoder.decode(msg.data)
                except msgspec.DecodeError:
                    log.error("broadcast.bad_chunk", channel=channel)
                    await msg.term()
                    continue
                try:
                    delay = await self.handle(job, msg)
                except Exception:
                    log.exception("broadcast.chunk_failed", broadcast_id=job.broadcast_id, channel=channel)
                    delay = 2.0
                with contextlib.suppress(Exception):
                    if delay is None:
                        await msg.ack()
                    else:
                        await msg.nak(delay=delay)

    async def handle(self, job: BulkJob, msg: Any = None) -> float | None:
        """Send one chunk; None when it is done (acknowledge), else seconds until it is taken again."""
        now = self.clock()
        if job.not_before is not None and job.not_before > now:
            return (job.not_before - now).total_seconds()
        state = await self.broadcasts.get(job.broadcast_id)
        left = undelivered(state, job.channel, job.targets)
        slots = asyncio.Semaphore(self.parallel)
        results: dict[str, Outcome] = {}

        async def one(person: Person) -> None:
            try:
                results[person.phone] = await self._send(state, job, person)
            finally:
                slots.release()

        sends = []
        told = time.monotonic()
        for person in left:
            waited = await self.priority.yield_to_alarms()
            if waited:
                self.stats.yields += 1
            if msg is not None and (waited or time.monotonic() - told >= BULK_PROGRESS_S):
                # still at it (alarms went first, or a slow rate): not taken by another process meanwhile
                told = time.monotonic()
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            await self._paced(job.channel)
            if self._paused(job.channel):
                results[person.phone] = Transient("paused: the gateway asked us to wait")
                continue
            await slots.acquire()
            sends.append(asyncio.ensure_future(one(person)))
        if sends:
            await asyncio.gather(*sends)
        return await self._record(job, left, results)

    def _paused(self, channel: str) -> bool:
        return self.paused_until.get(channel, 0.0) > time.monotonic()

    async def _paced(self, channel: str) -> None:
        for _ in range(1000):
            wait = self.limiter.take(channel, time.monotonic())
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def _send(self, state: BroadcastState, job: BulkJob, person: Person) -> Outcome:
        try:
            if job.channel == "voice":
                ref = f"{broadcast_leg(state.id, person.phone)}-{job.attempt}"
                payload: dict[str, Any] = {
                    "call_ref": ref,
                    "to": person.phone,
                    "text": spoken_text(state),
                    "keypad": BROADCAST_KEYPAD,
                    "callback_url": self.callback_url,
                    "ring_timeout_s": 30,
                    "notification_key": broadcast_leg(state.id, person.phone),
                    "context": {"broadcast_id": state.id, "phone": person.phone},
                }
                if person.language:
                    payload["language"] = person.language
                answer = await self.gateway.post(VOICE_PATH, payload, f"{ref}/{job.attempt}")
            else:
                key = stable_key("broadcast", state.id, person.phone, "sms")
                answer = await self.gateway.post(
                    SMS_PATH, {"to": person.phone, "text": warning_text(state), "ref": key}, key
                )
        except Unreachable as exc:
            return Transient(f"gateway {exc.reason}")
        outcome = http_outcome(answer)
        if isinstance(outcome, Transient) and answer.status in (429, 503):
            pause = outcome.retry_after if outcome.retry_after is not None else 1.0
            self.paused_until[job.channel] = max(self.paused_until.get(job.channel, 0.0), time.monotonic() + pause)
            self.stats.paused += 1
            log.warning("broadcast.gateway_busy", channel=job.channel, status=answer.status, pause_s=pause)
        return outcome

    async def _record(self, job: BulkJob, left: Sequence[Person], results: dict[str, Outcome]) -> float | None:
        handed = tuple(p.phone for p in left if isinstance(results.get(p.phone), Delivered))
        failures: list[Unreached] = []
        retry: list[Person] = []
        for person in left:
            outcome = results.get(person.phone)
            if isinstance(outcome, Permanent):
                failures.append(Unreached(phone=person.phone, kind="permanent", reason=outcome.reason))
            elif isinstance(outcome, Transient):
                if job.attempt < self.max_attempts:
                    retry.append(person)
                else:
                    failures.append(Unreached(phone=person.phone, kind="exhausted", reason=outcome.reason))
        if retry:
            waits = [self.paused_until.get(job.channel, 0.0) - time.monotonic()]
            delay = max([self.backoff_base * 2 ** (job.attempt - 1) * random.uniform(1.0, 1.5), *waits])
            await self.queue.enqueue(
                [
                    msgspec.structs.replace(
                        job,
                        targets=tuple(retry),
                        attempt=job.attempt + 1,
                        not_before=self.clock() + timedelta(seconds=delay),
                    )
                ]
            )
        if handed or failures:
            event = BroadcastHanded(
                at=self.clock(),
                broadcast_id=job.broadcast_id,
                channel=job.channel,
                chunk=job.chunk,
                attempt=job.attempt,
                phones=handed,
                failures=tuple(failures),
            )
            await self.store.append([Outgoing(broadcast_out_subject(job.broadcast_id), event, f"{job.key}:handed")])
        self.stats.handed += len(handed)
        self.stats.jobs += 1
        return None
