"""Run SQL projections from the log, exactly once, in order.

Invariants:
- each projection's checkpoint (the last stream sequence applied) is written in the same
  transaction as its rows; events at or below it are skipped, so a crash anywhere, a
  redelivery, or several processes sharing one PostgreSQL apply every event exactly once;
- the checkpoint row is created before it is locked (a lock on a missing row locks nothing),
  so concurrent writers serialize on it from their very first batch;
- events are applied strictly in stream order (an ordered consumer, one batch at a time); a batch
  gathers for up to LINGER_S, so a burst costs a few transactions, not one per event (the read
  model may lag the log by that much; the incident detail is read from the log itself);
- a database outage stops the projection where it was; it resumes from its checkpoint;
- `lag()` is how many matching events are in the log but not applied: what the server still held
  beyond the last one received, plus those received and not yet applied; it keeps growing while
  the database is down (above QUEUE it is a lower bound: delivery pauses while the queue is full).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Protocol

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from dispatch.events.codec import UnknownEvent
from dispatch.events.subjects import EVENTS_STREAM
from dispatch.projections.sql import Connection, Database, is_db_error
from dispatch.store.eventstore import Recorded, recorded_from
from dispatch.store.follow import SequenceWaiters

log = structlog.get_logger(__name__)

BATCH = 500
QUEUE = 5000
LINGER_S = 0.1

CHECKPOINTS_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_checkpoints ("
    " name TEXT PRIMARY KEY, position BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)"
)


class Projection(Protocol):
    name: str
    filter_subject: str

    def ddl(self) -> Sequence[str]: ...

    def tables(self) -> Sequence[str]: ...

    def apply_many(self, conn: Connection, recs: Sequence[Recorded], *, continued: bool = False) -> None:
        """Apply these events, in order, inside the caller's transaction. `continued`: the previous
        batch this process applied ended at the checkpoint, so nobody else wrote in between."""
        ...

    def forget(self) -> None:
        """Drop anything remembered between batches."""
        ...


def ensure_schema(conn: Connection, projection: Projection) -> None:
    conn.execute(CHECKPOINTS_DDL)
    for statement in projection.ddl():
        conn.execute(statement)


def checkpoint(conn: Connection, name: str, *, lock: bool = False) -> int:
    suffix = " FOR UPDATE" if lock and conn.dialect == "postgresql" else ""
    row = conn.one(f"SELECT position FROM projection_checkpoints WHERE name = ?{suffix}", (name,))
    return int(row[0]) if row else 0


def apply_batch(
    conn: Connection, projection: Projection, batch: Sequence[Recorded], *, previous: int | None = None
) -> int:
    """Apply in one transaction, skipping what the checkpoint says is done; return the new checkpoint.

    `previous` is the checkpoint this process wrote last: if the stored one still equals it, the
    projection may trust what it remembers; otherwise it must forget it."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO projection_checkpoints (name, position, updated_at) VALUES (?, 0, ?) "
            "ON CONFLICT (name) DO NOTHING",
            (projection.name, time.time()),
        )
        done = checkpoint(conn, projection.name, lock=True)
        fresh = [rec for rec in batch if rec.seq > done]
        if fresh:
            try:
                projection.apply_many(conn, fresh, continued=previous is not None and previous == done)
            except BaseException:
                projection.forget()
                raise
        position = fresh[-1].seq if fresh else done
        if position != done:
            conn.execute(
                "INSERT INTO projection_checkpoints (name, position, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                (projection.name, position, time.time()),
            )
    return position


def drop(conn: Connection, projection: Projection) -> None:
    conn.execute(CHECKPOINTS_DDL)
    with conn.transaction():
        for table in projection.tables():
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("DELETE FROM projection_checkpoints WHERE name = ?", (projection.name,))


class ProjectionRunner:
    def __init__(
        self, nc: NATS, db: Database, projection: Projection, *, stream: str = EVENTS_STREAM, linger: float = LINGER_S
    ) -> None:
        self.nc = nc
        self.linger = linger
        self.db = db
        self.projection = projection
        self.stream = stream
        self.applied = 0
        self._server_pending = 0
        self._received = 0
        self._done = 0
        self.healthy = True
        self._queue: asyncio.Queue[tuple[Recorded | None, int, int]] = asyncio.Queue(QUEUE)
        self._sub: object | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiters = SequenceWaiters()
        self._written: int | None = None

    @property
    def name(self) -> str:
        return self.projection.name

    @property
    def position(self) -> int:
        return self._waiters.position

    async def start(self) -> None:
        start = await asyncio.to_thread(self._prepare)
        self._waiters.advance(start)
        self._written = start
        await self._subscribe()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"projection:{self.name}")

    def _prepare(self) -> int:
        conn = self.db.thread_connection()
        ensure_schema(conn, self.projection)
        return checkpoint(conn, self.projection.name)

    async def _subscribe(self) -> None:
        js = self.nc.jetstream()
        self._sub = await js.subscribe(
            self.projection.filter_subject,
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=ConsumerConfig(opt_start_seq=self.position + 1),
            cb=self._on_msg,
            idle_heartbeat=2.0,
        )

    async def _on_msg(self, msg: Msg) -> None:
        """Decode as messages arrive (a little at a time), never a whole batch in one burst on the loop."""
        meta = msg.metadata
        try:
            rec: Recorded | None = recorded_from(msg)
        except UnknownEvent as exc:
            rec = None
            log.error("projection.unreadable", projection=self.name, seq=meta.sequence.stream, error=str(exc))
        self._received += 1
        self._server_pending = meta.num_pending
        await self._queue.put((rec, meta.sequence.stream, meta.num_pending))

    async def _gather(self) -> list[tuple[Recorded | None, int, int]]:
        """Wait for one event, then up to `linger` for more: few large transactions, not many tiny ones."""
        items = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger
        while len(items) < BATCH:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def _run(self) -> None:
        while True:
            items = await self._gather()
            _, last, _ = items[-1]
            batch = [rec for rec, _, _ in items if rec is not None]
            if batch:
                await self._apply_until_done(batch)
            self._done += len(items)
            self._advance(last)

    def lag(self) -> float:
        """Events in the log that match this projection and are not applied yet."""
        return float(self._server_pending + self._received - self._done)

    async def _apply_until_done(self, batch: list[Recorded]) -> None:
        delay = 0.2
        while True:
            try:
                await asyncio.to_thread(self._apply, batch)
                self.healthy = True
                self.applied += len(batch)
                return
            except Exception as exc:
                self.healthy = False
                if is_db_error(exc):
                    log.error("projection.db_error", projection=self.name, error=str(exc), retry_in_s=delay)
                    await asyncio.to_thread(self.db.drop_thread_connection)
                else:
                    log.exception("projection.apply_failed", projection=self.name, seq=batch[0].seq)
                    delay = 5.0
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _apply(self, batch: list[Recorded]) -> int:
        position = apply_batch(self.db.thread_connection(), self.projection, batch, previous=self._written)
        self._written = position
        return position

    def _advance(self, seq: int) -> None:
        self._waiters.advance(seq)

    async def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        await self._waiters.wait_for(seq, timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        sub = self._sub
        self._sub = None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]
