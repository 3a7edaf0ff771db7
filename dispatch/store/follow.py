"""Follow part of the log in order, in memory: an ordered consumer feeding a callback.

Invariants:
- messages reach `apply` one at a time in stream order (an ordered consumer recreates itself
  from the last sequence it saw after a gap or a reconnect, so nothing is skipped);
- `position` is the stream sequence of the last message applied; `wait_for(seq)` returns once
  the follower has applied `seq` or the filter holds nothing up to it;
- only committed messages are seen (a core subscription would also see the messages of a
  failed atomic batch).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from dispatch.events.codec import UnknownEvent
from dispatch.events.subjects import EVENTS_STREAM
from dispatch.store.eventstore import Recorded, StoreUnavailable, opened, recorded_from

log = structlog.get_logger(__name__)


KEYS_RETRY_S = 0.5


async def opened_patiently(rec: Recorded, reader: str) -> Recorded:
    """`rec` opened (`dispatch.store.keys`), waiting out an unavailable key store: an in-order reader
    never skips an event, nor applies one half-read."""
    while True:
        try:
            return await opened(rec)
        except StoreUnavailable as exc:
            log.warning("keys.unavailable", reader=reader, seq=rec.seq, error=str(exc), retry_in_s=KEYS_RETRY_S)
            await asyncio.sleep(KEYS_RETRY_S)


class SequenceWaiters:
    """Futures waiting for a stream position: `advance(seq)` releases every waiter at or below it."""

    def __init__(self) -> None:
        self.position = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def advance(self, seq: int) -> None:
        """Move the position to `seq` and release the waiters it reaches."""
        self.position = max(self.position, seq)
        if not self._waiters:
            return
        keep = []
        for target, fut in self._waiters:
            if target <= self.position:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self._waiters = keep

    async def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        """Wait until the position reaches `seq`."""
        if seq <= self.position:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        await asyncio.wait_for(fut, timeout)


class Follower:
    """Follows a subject filter in order and calls `apply` for each message."""

    def __init__(
        self,
        nc: NATS,
        filter_subject: str,
        apply: Callable[[Recorded], None],
        *,
        name: str,
        stream: str = EVENTS_STREAM,
        start_seq: int = 1,
        only_new: bool = False,
    ) -> None:
        self.nc = nc
        self.filter_subject = filter_subject
        self.apply = apply
        self.name = name
        self.stream = stream
        self.start_seq = max(1, start_seq)
        self.only_new = only_new
        self.applied = 0
        self.skipped = 0
        self._waiters = SequenceWaiters()
        self._sub: object | None = None

    @property
    def position(self) -> int:
        """The last sequence applied."""
        return self._waiters.position

    async def start(self, *, catch_up: bool = True, timeout: float = 120.0) -> None:
        """Start following; with `catch_up`, return once what was stored before is applied."""
        target = 0 if self.only_new or not catch_up else await self._last_matching_seq()
        js = self.nc.jetstream()
        if self.only_new:
            policy, config = DeliverPolicy.NEW, ConsumerConfig()
        else:
            policy, config = DeliverPolicy.BY_START_SEQUENCE, ConsumerConfig(opt_start_seq=self.start_seq)
        self._sub = await js.subscribe(
            self.filter_subject,
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=policy,
            config=config,
            cb=self._on_msg,
            idle_heartbeat=2.0,
        )
        if target >= self.start_seq:
            await self.wait_for(target, timeout=timeout)

    async def _last_matching_seq(self) -> int:
        reply = await self.nc.request(
            f"$JS.API.DIRECT.GET.{self.stream}", json.dumps({"last_by_subj": self.filter_subject}).encode(), timeout=5
        )
        if (reply.headers or {}).get("Status"):
            return 0
        return int((reply.headers or {}).get("Nats-Sequence", "0"))

    async def _on_msg(self, msg: Msg) -> None:
        try:
            rec = recorded_from(msg)
        except UnknownEvent as exc:
            self.skipped += 1
            log.error("follow.unreadable", follower=self.name, seq=msg.metadata.sequence.stream, error=str(exc))
            self._advance(msg.metadata.sequence.stream)
            return
        rec = await opened_patiently(rec, self.name)
        try:
            self.apply(rec)
            self.applied += 1
        except Exception:
            self.skipped += 1
            log.exception("follow.apply_failed", follower=self.name, seq=rec.seq)
        self._advance(rec.seq)

    def _advance(self, seq: int) -> None:
        self._waiters.advance(seq)

    async def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        """Wait until the message at `seq` is applied."""
        await self._waiters.wait_for(seq, timeout)

    async def stop(self) -> None:
        """Stop following."""
        sub = self._sub
        self._sub = None
        if sub is not None:
            try:
                await sub.unsubscribe()  # type: ignore[attr-defined]
            except Exception as exc:
                log.debug("follow.unsubscribe_failed", follower=self.name, error=str(exc))
