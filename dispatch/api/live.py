"""The live hub: pushes committed incident events and console notifications to open browsers.

Invariants:
- incident events come from an ordered JetStream consumer (new messages only), so a browser
  never sees an event of a batch that failed to commit;
- a client only receives what its filter allows (villages; None means all);
- a slow client never slows the hub: its queue is bounded and, when full, the client is told to
  reload (`resync`) instead of being fed a partial stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatch.events.codec import to_builtins
from dispatch.events.model import IncidentEvent, IncidentOpened
from dispatch.events.subjects import CONSOLE_ALL, INCIDENTS_ALL, incident_subject
from dispatch.store.eventstore import EventStore, Recorded
from dispatch.store.follow import Follower

log = structlog.get_logger(__name__)

CLIENT_QUEUE = 512
VILLAGE_CACHE = 20_000
_SKIP = {"recipients", "duty_desks", "quorum"}


@dataclass(eq=False)
class Client:
    villages: frozenset[str] | None
    queue: asyncio.Queue[tuple[str, str]] = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))
    overflowed: bool = False

    def wants(self, village: str | None) -> bool:
        return self.villages is None or (village is not None and village in self.villages)

    def put(self, kind: str, data: str) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait((kind, data))
        except asyncio.QueueFull:
            self.overflowed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(("resync", "{}"))


class LiveHub:
    def __init__(self, nc: NATS, store: EventStore) -> None:
        self.nc = nc
        self.store = store
        self.clients: set[Client] = set()
        self._villages: OrderedDict[str, str | None] = OrderedDict()
        self._follower = Follower(nc, INCIDENTS_ALL, self._on_event, name="live", only_new=True)
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._follower.start(catch_up=False)
        self._sub = await self.nc.subscribe(CONSOLE_ALL, cb=self._on_notification)

    def connect(self, villages: frozenset[str] | None) -> Client:
        client = Client(villages)
        self.clients.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)

    def _remember(self, incident_id: str, village: str | None) -> None:
        self._villages[incident_id] = village
        self._villages.move_to_end(incident_id)
        while len(self._villages) > VILLAGE_CACHE:
            self._villages.popitem(last=False)

    def _on_event(self, rec: Recorded) -> None:
        event = rec.event
        if not isinstance(event, IncidentEvent):
            return
        if isinstance(event, IncidentOpened):
            self._remember(event.incident_id, event.village)
        if not self.clients:
            return
        if event.incident_id in self._villages:
            self._broadcast(rec, self._villages[event.incident_id])
            return
        task = asyncio.get_running_loop().create_task(self._lookup_then_broadcast(rec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lookup_then_broadcast(self, rec: Recorded) -> None:
        assert isinstance(rec.event, IncidentEvent)
        village = None
        try:
            history = await self.store.load(incident_subject(rec.event.incident_id))
            opened = next((r.event for r in history if isinstance(r.event, IncidentOpened)), None)
            village = opened.village if opened else None
        except Exception as exc:
            log.warning("live.lookup_failed", error=str(exc))
        self._remember(rec.event.incident_id, village)
        self._broadcast(rec, village)

    def _broadcast(self, rec: Recorded, village: str | None) -> None:
        data = {k: v for k, v in to_builtins(rec.event).items() if k not in _SKIP}
        body = json.dumps({"seq": rec.seq, "village": village, "event": data}, ensure_ascii=False, default=str)
        for client in list(self.clients):
            if client.wants(village):
                client.put("incident", body)

    async def _on_notification(self, msg: Msg) -> None:
        if not self.clients:
            return
        try:
            payload = json.loads(msg.data)
        except ValueError:
            return
        village = payload.get("village")
        body = msg.data.decode()
        for client in list(self.clients):
            if client.wants(village):
                client.put("notification", body)

    async def stop(self) -> None:
        await self._follower.stop()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for client in list(self.clients):
            client.put("bye", "{}")
        for task in list(self._tasks):
            task.cancel()
