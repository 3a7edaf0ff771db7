"""Run SQL projections from the log, exactly once, in order; versions rebuild beside each other.

Invariants:
- each projection's checkpoint (the last stream sequence applied) is written in the same
  transaction as its rows; events at or below it are skipped, so a crash anywhere, a
  redelivery, or several processes sharing one PostgreSQL apply every event exactly once;
- the checkpoint row is created before it is locked (a lock on a missing row locks nothing),
  so concurrent writers serialize on it from their very first batch;
- events are applied strictly in stream order (an ordered consumer, one batch at a time); a batch
  gathers for up to LINGER_S, so a burst costs a few transactions, not one per event (the read
  model may lag the log by that much; the incident detail is read from the log itself); while
  catching up on a backlog, batches grow to CATCH_UP_BATCH;
- a database outage stops the projection where it was; it resumes from its checkpoint; a database
  unreachable at start delays only the projection (it opens once the database answers), never the
  service that rings the alarms;
- `lag()` is how many events are in the log but not applied: what the server still held beyond the
  last one received, plus those received and not yet applied or skipped (the consumer reads the
  whole stream and skips other subjects); it keeps growing while the database is down (above QUEUE
  it is a lower bound: delivery pauses while the queue is full);
- versions: a projection is `<family>_v<version>` and its tables carry the same suffix, so a new
  version builds beside the old one. It becomes the family's *active* version (the one reads use)
  only once it has applied everything the log held when it started; the older versions are then
  *retired* in the same transaction, and their tables dropped after RETIRED_GRACE_S (old processes
  of a rolling upgrade may still be serving from them) or by `dispatch replay`. A version never
  takes over from a newer one;
- a version's secondary indexes (`indexes()`) are made in the transaction that makes it active,
  and at start when it already is, never while it builds: nothing reads a building version, and
  filling tables then indexing them is cheaper than keeping the indexes up row by row
  (`docs/benchmarks.md`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Protocol

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from dispatch.events import codec
from dispatch.events.codec import UnknownEvent
from dispatch.events.subjects import EVENTS_ALL, EVENTS_STREAM
from dispatch.projections.sql import SCHEMA_LOCK, Connection, Database, is_db_error
from dispatch.store.eventstore import H_MSG_ID, Recorded
from dispatch.store.follow import SequenceWaiters, opened_patiently

log = structlog.get_logger(__name__)

BATCH = 500
CATCH_UP_BATCH = 5000
QUEUE = 10_000
LINGER_S = 0.1
RETIRED_GRACE_S = 3600.0

CHECKPOINTS_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_checkpoints ("
    " name TEXT PRIMARY KEY, position BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)"
)
VERSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_versions ("
    " name TEXT PRIMARY KEY, family TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL,"
    " tables TEXT NOT NULL, changed_at DOUBLE PRECISION NOT NULL)"
)
BUILDING, ACTIVE, RETIRED = "building", "active", "retired"


class Projection(Protocol):
    family: str
    version: int
    filter_subjects: tuple[str, ...]
    server_filter: bool
    """True: the server sends only `filter_subjects` (cheap when they are a small part of the log);
    False: the consumer reads the whole log and skips the rest here (see `_on_msg`)."""
    legacy: tuple[tuple[str, int, tuple[str, ...]], ...]
    """Older versions from before the version registry: (name, version, tables)."""

    @property
    def name(self) -> str: ...

    def ddl(self) -> Sequence[str]:
        """The tables, with their primary keys (`CREATE TABLE IF NOT EXISTS`)."""
        ...

    def indexes(self) -> Sequence[str]:
        """The secondary indexes (`CREATE INDEX IF NOT EXISTS`): what reads need and folding does not."""
        ...

    def tables(self) -> Sequence[str]: ...

    def apply_many(self, conn: Connection, recs: Sequence[Recorded], *, continued: bool = False) -> None:
        """Apply these events, in order, inside the caller's transaction. `continued`: the previous
        batch this process applied ended at the checkpoint, so nobody else wrote in between."""
        ...

    def forget(self) -> None:
        """Drop anything remembered between batches."""
        ...


def versioned(family: str, version: int) -> str:
    return f"{family}_v{version}"


@contextlib.contextmanager
def schema_change(conn: Connection) -> Iterator[Connection]:
    """A transaction that processes changing the schema take one at a time: PostgreSQL's
    `CREATE TABLE IF NOT EXISTS` run by two at once fails in one of them (a duplicate pg_type row),
    as when a service and a read-side worker start together."""
    with conn.transaction():
        if conn.dialect == "postgresql":
            conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
        yield conn


def ensure_bookkeeping(conn: Connection) -> None:
    with schema_change(conn):
        conn.execute(CHECKPOINTS_DDL)
        conn.execute(VERSIONS_DDL)


def ensure_schema(conn: Connection, projection: Projection) -> None:
    """Create the bookkeeping tables and the projection's own, and register it (building) if new;
    an active version gets any index it lacks."""
    with schema_change(conn):
        conn.execute(CHECKPOINTS_DDL)
        conn.execute(VERSIONS_DDL)
        for statement in projection.ddl():
            conn.execute(statement)
        tables = ",".join(projection.tables())
        conn.execute(
            "INSERT INTO projection_versions (name, family, version, state, tables, changed_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (projection.name, projection.family, projection.version, BUILDING, tables, time.time()),
        )
        if state_of(conn, projection.name) == ACTIVE:
            for statement in projection.indexes():
                conn.execute(statement)


def checkpoint(conn: Connection, name: str, *, lock: bool = False) -> int:
    suffix = " FOR UPDATE" if lock and conn.dialect == "postgresql" else ""
    row = conn.one(f"SELECT position FROM projection_checkpoints WHERE name = ?{suffix}", (name,))
    return int(row[0]) if row else 0


def state_of(conn: Connection, name: str) -> str | None:
    row = conn.one("SELECT state FROM projection_versions WHERE name = ?", (name,))
    return str(row[0]) if row else None


def active_version(conn: Connection, family: str) -> str | None:
    row = conn.one("SELECT name FROM projection_versions WHERE family = ? AND state = ?", (family, ACTIVE))
    return str(row[0]) if row else None


def take_over(conn: Connection, projection: Projection) -> bool:
    """Index `projection`, make it its family's active version and retire the others; False (and
    nothing changed) if a newer one is active."""
    now = time.time()
    with schema_change(conn):
        lock = " FOR UPDATE" if conn.dialect == "postgresql" else ""
        rows = conn.query(
            f"SELECT name, version, state FROM projection_versions WHERE family = ?{lock}", (projection.family,)
        )
        if any(state == ACTIVE and int(version) > projection.version for _, version, state in rows):
            return False
        for name, version, tables in projection.legacy:
            if conn.one("SELECT 1 FROM projection_checkpoints WHERE name = ?", (name,)):
                conn.execute(
                    "INSERT INTO projection_versions (name, family, version, state, tables, changed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                    (name, projection.family, version, RETIRED, ",".join(tables), now),
                )
        conn.execute(
            "UPDATE projection_versions SET state = ?, changed_at = ? WHERE family = ? AND version < ? AND state <> ?",
            (RETIRED, now, projection.family, projection.version, RETIRED),
        )
        for statement in projection.indexes():
            conn.execute(statement)
        conn.execute(
            "UPDATE projection_versions SET state = ?, changed_at = ? WHERE name = ?", (ACTIVE, now, projection.name)
        )
    return True


def drop_retired(
    conn: Connection, family: str, *, older_than: float | None = RETIRED_GRACE_S, keep: str = ""
) -> list[str]:
    """Drop the tables of the family's versions retired more than `older_than` seconds ago (None: all),
    except `keep` (a process never drops the tables it is itself running on)."""
    cutoff = time.time() - older_than if older_than is not None else float("inf")
    dropped = []
    for name, tables in conn.query(
        "SELECT name, tables FROM projection_versions WHERE family = ? AND state = ? AND changed_at < ? AND name <> ?",
        (family, RETIRED, cutoff, keep),
    ):
        with conn.transaction():
            for table in str(tables).split(","):
                if table:
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute("DELETE FROM projection_checkpoints WHERE name = ?", (name,))
            conn.execute("DELETE FROM projection_versions WHERE name = ?", (name,))
        dropped.append(str(name))
    if dropped:
        conn.forget_staging()
        log.info("projection.retired_dropped", family=family, versions=dropped)
    return dropped


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
    """Drop the projection's tables, checkpoint and registration (it rebuilds from the start)."""
    ensure_bookkeeping(conn)
    with conn.transaction():
        for table in projection.tables():
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("DELETE FROM projection_checkpoints WHERE name = ?", (projection.name,))
        conn.execute("DELETE FROM projection_versions WHERE name = ?", (projection.name,))
    conn.forget_staging()


async def last_matching(nc: NATS, subjects: Sequence[str], stream: str = EVENTS_STREAM) -> int:
    """The stream sequence of the last message on any of `subjects` (0: none)."""
    last = 0
    for subject in subjects:
        reply = await nc.request(
            f"$JS.API.DIRECT.GET.{stream}", json.dumps({"last_by_subj": subject}).encode(), timeout=5
        )
        headers = reply.headers or {}
        if not headers.get("Status"):
            last = max(last, int(headers.get("Nats-Sequence", "0")))
    return last


def subject_prefixes(filters: Sequence[str]) -> tuple[str, ...]:
    """`dispatch.evt.incident.>` -> `dispatch.evt.incident.`; only trailing `>` filters are supported."""
    out = []
    for subject in filters:
        if not subject.endswith(".>") or "*" in subject:
            raise ValueError(f"projection filter {subject!r} must be a prefix ending in '.>'")
        out.append(subject[:-1])
    return tuple(out)


def delivery_info(reply: str) -> tuple[int, int, float]:
    """(stream sequence, messages pending, stored at epoch seconds) from a JetStream delivery's reply
    subject `$JS.ACK.[<domain>.<hash>.]<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>[...]`.
    nats-py's `msg.metadata` builds two frozen dataclasses and a datetime per message: a sixth of a
    rebuild's time on the event loop, measured."""
    tokens = reply.split(".")
    base = 0 if len(tokens) == 9 else 2
    return int(tokens[base + 5]), int(tokens[base + 8]), int(tokens[base + 7]) / 1e9


Item = tuple[Recorded | None, int]


class ProjectionRunner:
    def __init__(
        self,
        nc: NATS,
        db: Database,
        projection: Projection,
        *,
        stream: str = EVENTS_STREAM,
        linger: float = LINGER_S,
        batch: int = BATCH,
        catch_up_batch: int = CATCH_UP_BATCH,
        retired_grace: float = RETIRED_GRACE_S,
    ) -> None:
        self.nc = nc
        self.linger = linger
        self.db = db
        self.projection = projection
        self.stream = stream
        self.batch = batch
        self.catch_up_batch = max(batch, catch_up_batch)
        self.retired_grace = retired_grace
        self.applied = 0
        self.healthy = True
        self.target = 0
        self.started_at = 0.0
        self._active = False
        self._items: deque[Item] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._wanted = 1
        self._received = 0
        self._done = 0
        self._server_pending = 0
        self._sub: object | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened = False
        self._waiters = SequenceWaiters()
        self._written: int | None = None
        self._prefixes = subject_prefixes(projection.filter_subjects)

    @property
    def name(self) -> str:
        return self.projection.name

    @property
    def position(self) -> int:
        return self._waiters.position

    def lag(self) -> float:
        """Events in the log not applied yet: still on the server beyond the last one received, or
        received and waiting here (`dispatch_projection_lag_events`); NaN (unknown) until the projection
        could be opened (its database unreachable since the start)."""
        if not self._opened:
            return math.nan
        return float(max(0, self._server_pending + self._received - self._done))

    @property
    def active(self) -> bool:
        """Reads may use this version: it has caught up (here or in another process sharing the database)."""
        return self._active

    async def start(self) -> None:
        """Open the projection and follow the log. With the database unreachable it opens once the
        database answers, in the background: the service it belongs to still starts and rings alarms."""
        loop = asyncio.get_running_loop()
        try:
            await self._open()
        except Exception as exc:
            if not is_db_error(exc):
                raise
            self.healthy = False
            log.error("projection.db_unavailable_at_start", projection=self.name, error=str(exc))
            self._task = loop.create_task(self._open_when_reachable(), name=f"projection:{self.name}")
            return
        self._task = loop.create_task(self._run(), name=f"projection:{self.name}")

    async def _open(self) -> None:
        start, self._active = await asyncio.to_thread(self._prepare)
        self._waiters.advance(start)
        self._written = start
        self.target = await last_matching(self.nc, self.projection.filter_subjects, self.stream)
        self.started_at = time.monotonic()
        if not self._active and start >= self.target:
            await asyncio.to_thread(self._take_over)
        await self._subscribe()
        self._opened = True

    async def _open_when_reachable(self) -> None:
        delay = 0.2
        while True:
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self.db.drop_thread_connection)
                await self._open()
                break
            except Exception as exc:
                if is_db_error(exc):
                    log.error("projection.db_error", projection=self.name, error=str(exc), retry_in_s=delay)
                else:
                    log.exception("projection.open_failed", projection=self.name)
                delay = min(delay * 2, 5.0)
        self.healthy = True
        log.info("projection.opened", projection=self.name, position=self.position)
        await self._run()

    def _prepare(self) -> tuple[int, bool]:
        conn = self.db.thread_connection()
        ensure_bookkeeping(conn)
        drop_retired(conn, self.projection.family, older_than=self.retired_grace, keep=self.name)
        ensure_schema(conn, self.projection)
        return checkpoint(conn, self.projection.name), state_of(conn, self.projection.name) == ACTIVE

    def _take_over(self) -> None:
        conn = self.db.thread_connection()
        if take_over(conn, self.projection):
            self._active = True
            log.info("projection.active", projection=self.name, position=self.position)
            drop_retired(conn, self.projection.family, older_than=self.retired_grace, keep=self.name)

    def progress(self) -> str:
        """`incidents_v2 45% (90000/200000)`: how far a rebuild has come towards what the log held at start."""
        share = min(1.0, self.position / self.target) if self.target else 1.0
        return f"{self.name} {share:.0%} ({self.position}/{self.target})"

    async def refresh_active(self) -> bool:
        """Ask the database whether another process has made this version active."""
        if not self._active:
            state = await asyncio.to_thread(lambda: state_of(self.db.thread_connection(), self.name))
            self._active = state == ACTIVE
        return self._active

    async def _subscribe(self) -> None:
        js = self.nc.jetstream()
        config = ConsumerConfig(opt_start_seq=self.position + 1)
        subjects = list(self.projection.filter_subjects)
        if self.projection.server_filter and len(subjects) > 1:
            config.filter_subjects = subjects
        self._sub = await js.subscribe(
            subjects[0] if self.projection.server_filter else EVENTS_ALL,
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=config,
            cb=self._on_msg,
            idle_heartbeat=2.0,
        )

    async def _on_msg(self, msg: Msg) -> None:
        """Decode as messages arrive (a little at a time), never a whole batch in one burst on the loop.

        A projection of most of the log reads all of it and picks its subjects here: a server-side
        filter costs the server a subject-index walk per message (measured on 100k events: 23k msg/s
        for `dispatch.evt.*.*`, 3k msg/s for the incident and notice subjects, 57k msg/s for all);
        for a sparse one (the roster: 2k of 100k) the server's filter is the cheaper (0.3 s)."""
        seq, pending, stamp = delivery_info(msg.reply)
        rec: Recorded | None = None
        if msg.subject.startswith(self._prefixes):
            headers = msg.headers or {}
            try:
                event = codec.decode_headers(headers, msg.data)
                rec = Recorded(seq, msg.subject, event, headers.get(H_MSG_ID), datetime.fromtimestamp(stamp, UTC))
                rec = await opened_patiently(rec, self.name)
            except UnknownEvent as exc:
                log.error("projection.unreadable", projection=self.name, seq=seq, error=str(exc))
        self._items.append((rec, seq))
        self._received += 1
        self._server_pending = pending
        if len(self._items) >= self._wanted:
            self._ready.set()
        if len(self._items) >= QUEUE:
            self._room.clear()
            await self._room.wait()

    async def _gather(self) -> list[Item]:
        """Wait for one event, then up to `linger` for more: few large transactions, not many tiny ones.
        Catching up (the server holds more than a batch), a batch may be much larger."""
        self._wanted = 1
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        limit = self.catch_up_batch if self._server_pending > self.batch else self.batch
        if len(self._items) < limit:
            self._wanted = limit
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), self.linger)
        take = min(limit, len(self._items))
        items = [self._items.popleft() for _ in range(take)]
        if len(self._items) < QUEUE:
            self._room.set()
        return items

    async def _run(self) -> None:
        while True:
            items = await self._gather()
            last = items[-1][1]
            batch = [rec for rec, _ in items if rec is not None]
            if batch:
                await self._apply_until_done(batch)
            self._done += len(items)
            if not self._active and last >= self.target:
                await self._take_over_until_done()
            self._advance(last)

    async def _take_over_until_done(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._take_over)
                return
            except Exception as exc:
                if is_db_error(exc):
                    log.error("projection.db_error", projection=self.name, error=str(exc), retry_in_s=1.0)
                    await asyncio.to_thread(self.db.drop_thread_connection)
                else:
                    log.exception("projection.take_over_failed", projection=self.name)
                await asyncio.sleep(1.0)

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
        self._room.set()
