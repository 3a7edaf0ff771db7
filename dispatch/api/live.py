"""The live hub: pushes committed incident events and console notifications to open browsers.

The console is a view, not a delivery channel: each alarm decision (AlarmRaised, UnregisteredCall,
CallRepeated) becomes one `notification` per alerted person here, built the way a webhook payload
is, with no extra message on NATS.

Invariants:
- events come from an ordered JetStream consumer (new messages only), so a browser never sees an
  event of a batch that failed to commit;
- a client only receives what its filter allows (villages; None means all); with no client
  connected the hub reads nothing from the log;
- a slow client never slows the hub: its queue is bounded and, when full, the client is told to
  reload (`resync`) instead of being fed a partial stream;
- a client is bound to the token that opened it: when that token is revoked (seen by every
  process's token table), the client's pending messages are dropped and its stream ends (`bye`);
- the log unreachable when the first browser connects is StoreUnavailable (503), and that browser
  is not kept;
- a broadcast's events (its decisions and its chunks' outcomes, `dispatch.evt.broadcast.>`) reach a
  browser as `broadcast` messages naming the broadcast and nothing personal: the hub reads only the
  subject (and a BroadcastStarted's villages, which are not sealed), never opens a sealed number, and
  coalesces a broadcast's burst of outcomes into at most one message per broadcast every
  BROADCAST_TICK_S; a browser refetches the counts it is allowed to see. A broadcast whose villages
  cannot be found reaches only the clients that see every village.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import DeliverPolicy

from dispatch.channels.base import notification
from dispatch.domain.incident import alert_for
from dispatch.domain.messages import alert_text_en_for, alert_text_for
from dispatch.events.codec import TYPE_HEADER, UnknownEvent, decode_headers, to_builtins
from dispatch.events.model import BroadcastStarted, CallRepeated, IncidentEvent, IncidentOpened
from dispatch.events.subjects import BROADCASTS_ALL, EVENTS_STREAM, SINGLE_TOKEN_AGGREGATES, incident_subject
from dispatch.ids import stable_key
from dispatch.store.eventstore import EventStore, Recorded, StoreUnavailable
from dispatch.store.follow import Follower

log = structlog.get_logger(__name__)

CLIENT_QUEUE = 512
OPENED_CACHE = 5_000
BROADCAST_TICK_S = 0.5
_SKIP = {"recipients", "duty_desks", "quorum"}


@dataclass(eq=False)
class Client:
    villages: frozenset[str] | None
    token_id: str | None = None
    queue: asyncio.Queue[tuple[str, str]] = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))
    overflowed: bool = False
    closed: bool = False

    def wants(self, village: str | None) -> bool:
        return self.villages is None or (village is not None and village in self.villages)

    def wants_any(self, villages: tuple[str, ...] | None) -> bool:
        return self.villages is None or (villages is not None and not self.villages.isdisjoint(villages))

    def close(self, reason: str) -> None:
        """Drop what is pending and end the stream with `bye`; nothing is queued after."""
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(("bye", json.dumps({"reason": reason})))

    def put(self, kind: str, data: str) -> None:
        if self.overflowed or self.closed:
            return
        try:
            self.queue.put_nowait((kind, data))
        except asyncio.QueueFull:
            self.overflowed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(("resync", "{}"))


class LiveHub:
    def __init__(
        self,
        nc: NATS,
        store: EventStore,
        *,
        public_url: str,
        broadcast_villages: Callable[[str], Awaitable[tuple[str, ...]]] | None = None,
    ) -> None:
        self.nc = nc
        self.store = store
        self.public_url = public_url.rstrip("/")
        self.clients: set[Client] = set()
        self._opened: OrderedDict[str, IncidentOpened | None] = OrderedDict()
        self._follower = Follower(nc, SINGLE_TOKEN_AGGREGATES, self._on_event, name="live", only_new=True)
        self._broadcast_villages = broadcast_villages
        self._villages_of: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._changed: dict[str, int] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._broadcast_sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._following = False

    async def start(self) -> None:
        return None

    @property
    def following(self) -> bool:
        """Whether the hub follows the log now (some browser is connected)."""
        return self._following

    async def connect(self, villages: frozenset[str] | None, token_id: str | None = None) -> Client:
        """A new browser: the hub follows the log only while someone is listening."""
        client = Client(villages, token_id)
        async with self._lock:
            if not self._following:
                try:
                    await self._follower.start(catch_up=False)
                    self._broadcast_sub = await self.nc.jetstream().subscribe(
                        BROADCASTS_ALL,
                        stream=EVENTS_STREAM,
                        ordered_consumer=True,
                        deliver_policy=DeliverPolicy.NEW,
                        cb=self._on_broadcast_msg,
                        idle_heartbeat=2.0,
                    )
                except (NatsError, TimeoutError) as exc:  # the log unreachable: 503, not a 500
                    await self._follower.stop()
                    raise StoreUnavailable(f"event log unavailable: {type(exc).__name__}") from exc
                self._following = True
            self.clients.add(client)
        return client

    def revoke(self, token_id: str) -> None:
        """End every open stream of a revoked token at once."""
        for client in [c for c in self.clients if c.token_id == token_id]:
            client.close("revoked")

    async def disconnect(self, client: Client) -> None:
        self.clients.discard(client)
        async with self._lock:
            if self._following and not self.clients:
                await self._stop_following()

    async def _stop_following(self) -> None:
        await self._follower.stop()
        sub, self._broadcast_sub = self._broadcast_sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._following = False

    def _remember(self, incident_id: str, opened: IncidentOpened | None) -> None:
        self._opened[incident_id] = opened
        self._opened.move_to_end(incident_id)
        while len(self._opened) > OPENED_CACHE:
            self._opened.popitem(last=False)

    def _on_event(self, rec: Recorded) -> None:
        event = rec.event
        if not isinstance(event, IncidentEvent):
            return
        if isinstance(event, IncidentOpened):
            self._remember(event.incident_id, event)
        if not self.clients:
            return
        if event.incident_id in self._opened:
            self._broadcast(rec, self._opened[event.incident_id])
            return
        task = asyncio.get_running_loop().create_task(self._lookup_then_broadcast(rec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lookup_then_broadcast(self, rec: Recorded) -> None:
        assert isinstance(rec.event, IncidentEvent)
        opened = None
        try:
            history = await self.store.load(incident_subject(rec.event.incident_id))
            first = history[0].event if history else None
            opened = first if isinstance(first, IncidentOpened) else None
        except Exception as exc:
            log.warning("live.lookup_failed", error=str(exc))
        self._remember(rec.event.incident_id, opened)
        self._broadcast(rec, opened)

    def _broadcast(self, rec: Recorded, opened: IncidentOpened | None) -> None:
        assert isinstance(rec.event, IncidentEvent)
        village = opened.village if opened else None
        listeners = [c for c in self.clients if c.wants(village)]
        if not listeners:
            return
        data = {k: v for k, v in to_builtins(rec.event).items() if k not in _SKIP}
        body = json.dumps({"seq": rec.seq, "village": village, "event": data}, ensure_ascii=False, default=str)
        for client in listeners:
            client.put("incident", body)
        if opened is not None and isinstance(rec.event, IncidentOpened | CallRepeated):
            self._notify(rec, opened, listeners)

    def _notify(self, rec: Recorded, opened: IncidentOpened, listeners: list[Client]) -> None:
        trigger = rec.event
        assert isinstance(trigger, IncidentOpened | CallRepeated)
        alert = alert_for(opened, trigger)
        if alert is None:
            return
        message, message_en = alert_text_for(alert), alert_text_en_for(alert)
        kind = "repeat" if alert.reason == "repeat" else ("alarm" if alert.registered else "unregistered")
        for person in alert.recipients:
            body = json.dumps(
                notification(
                    kind=kind,
                    incident_id=alert.incident_id,
                    village=alert.village,
                    group=alert.group,
                    caller=alert.caller,
                    recipient=person,
                    urgency=alert.urgency,
                    message=message,
                    message_en=message_en,
                    answer_url=f"{self.public_url}/v1/incidents/{alert.incident_id}/responses",
                    raised_at=alert.raised_at,
                    round=rec.seq,
                    key=stable_key(alert.incident_id, rec.seq, person.phone, "console"),
                ),
                ensure_ascii=False,
            )
            for client in listeners:
                client.put("notification", body)

    async def _on_broadcast_msg(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        if len(tokens) < 4:
            return
        broadcast_id = tokens[3]
        headers = msg.headers or {}
        if headers.get(TYPE_HEADER) == "BroadcastStarted":
            try:
                started = decode_headers(headers, msg.data)
            except UnknownEvent:
                started = None
            if isinstance(started, BroadcastStarted):
                self._remember_villages(broadcast_id, started.villages)
        if not self.clients:
            return
        self._changed[broadcast_id] = msg.metadata.sequence.stream
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_broadcasts())

    def _remember_villages(self, broadcast_id: str, villages: tuple[str, ...]) -> None:
        self._villages_of[broadcast_id] = tuple(villages)
        self._villages_of.move_to_end(broadcast_id)
        while len(self._villages_of) > OPENED_CACHE:
            self._villages_of.popitem(last=False)

    async def _flush_broadcasts(self) -> None:
        """After BROADCAST_TICK_S, one `broadcast` message per broadcast changed meanwhile."""
        await asyncio.sleep(BROADCAST_TICK_S)
        changed, self._changed = self._changed, {}
        self._flusher = None
        for broadcast_id, seq in changed.items():
            villages = self._villages_of.get(broadcast_id)
            if villages is None and self._broadcast_villages is not None:
                try:
                    villages = await self._broadcast_villages(broadcast_id)
                    self._remember_villages(broadcast_id, villages)
                except Exception as exc:
                    log.warning("live.broadcast_lookup_failed", broadcast_id=broadcast_id, error=str(exc))
            body = json.dumps(
                {"seq": seq, "broadcast_id": broadcast_id, "villages": list(villages or ())}, ensure_ascii=False
            )
            for client in self.clients:
                if client.wants_any(villages):
                    client.put("broadcast", body)

    async def stop(self) -> None:
        if self._following:
            await self._stop_following()
        if self._flusher is not None:
            self._flusher.cancel()
        for client in list(self.clients):
            client.put("bye", "{}")
        for task in list(self._tasks):
            task.cancel()
