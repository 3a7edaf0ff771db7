"""Gauges read in the background, so a scrape never waits on NATS or the database.

Invariants:
- every `every` seconds (and once at start): the delivery work queue's depth per channel (its
  consumers' pending and unacknowledged jobs, from the server), the open / uncovered / overdue
  incidents (the read model, in a worker thread, never on the event loop), and each readiness check;
  villages new to the directory get their alarm counter at 0, so an alert's `increase()` sees
  their first alarm;
- a source that cannot be read, or does not answer within `read_timeout`, sets its gauges to NaN
  ("unknown") — never to a stale or zero value that would look healthy — and readiness it cannot
  establish counts as not ready;
- a database that hangs holds at most one read and one readiness check: the next starts only once
  the last has returned, so the shared thread pool (projections, API) is never drained by the gauges;
- one source failing never delays or stops the others, nor the next refresh;
- with the read models kept by another process (`read_side`), each one's lag is how far its
  checkpoint is behind the last matching message of the log, in stream sequence numbers.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import structlog
from nats.aio.client import Client as NATS

from dispatch.observe.background import BackgroundTask
from dispatch.observe.metrics import Metrics
from dispatch.projections import queries
from dispatch.projections.runner import Projection, checkpoint, last_matching
from dispatch.projections.sql import Database
from dispatch.store.provision import delivery_consumer

log = structlog.get_logger(__name__)

REFRESH_EVERY_S = 5.0
READ_TIMEOUT_S = 10.0
UNKNOWN = (math.nan, math.nan, math.nan)


class GaugeRefresher(BackgroundTask):
    """Refreshes the gauges every `every` seconds in the background (see the module's invariants)."""

    task_name = "gauges"

    def __init__(
        self,
        metrics: Metrics,
        *,
        nc: NATS,
        db: Database,
        channels: Sequence[str],
        readiness: Callable[[], Awaitable[dict[str, bool]]],
        villages: Callable[[], Iterable[str]] = tuple,
        read_side: Sequence[Projection] = (),
        every: float = REFRESH_EVERY_S,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        self.read_side = list(read_side)
        self.metrics = metrics
        self.nc = nc
        self.db = db
        self.channels = list(channels)
        self.readiness = readiness
        self.villages = villages
        self.every = every
        self.read_timeout = read_timeout
        self._reading: asyncio.Future[tuple[float, float, float]] | None = None
        self._checks: set[str] = set()
        self._readying: asyncio.Future[dict[str, bool]] | None = None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("gauges.refresh_failed")
            await asyncio.sleep(self.every)

    async def refresh(self) -> None:
        """Read every source once and set the gauges."""
        self.metrics.start_villages_at_zero(self.villages())
        await asyncio.gather(self._queue_depth(), self._incidents(), self._ready(), self._read_side_lag())
        self.metrics.gauges_refreshed.set(time.time())

    async def _queue_depth(self) -> None:
        for channel in self.channels:
            spec = delivery_consumer(channel)
            try:
                reply = await self.nc.request(f"$JS.API.CONSUMER.INFO.{spec.stream}.{spec.durable}", b"", timeout=2)
                info = json.loads(reply.data)
                if "error" in info:
                    raise RuntimeError(info["error"].get("description", "consumer info refused"))
                waiting = float(int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0)))
            except Exception as exc:
                log.debug("gauges.queue_unreadable", channel=channel, error=str(exc) or type(exc).__name__)
                waiting = math.nan
            self.metrics.delivery_queue.labels(channel).set(waiting)

    async def _read_side_lag(self) -> None:
        for projection in self.read_side:
            try:
                head = await last_matching(self.nc, projection.filter_subjects)
                done = await asyncio.wait_for(asyncio.to_thread(self._checkpoint, projection.name), self.read_timeout)
                lag = float(max(0, head - done))
            except Exception as exc:
                log.debug(
                    "gauges.read_side_unreadable", projection=projection.name, error=str(exc) or type(exc).__name__
                )
                lag = math.nan
            self.metrics.projection_lag.labels(projection.name).set(lag)

    def _checkpoint(self, name: str) -> int:
        try:
            return checkpoint(self.db.thread_connection(), name)
        except Exception:
            self.db.drop_thread_connection()
            raise

    async def _incidents(self) -> None:
        counts = UNKNOWN
        if self._reading is not None and not self._reading.done():
            log.warning("gauges.incidents_still_reading", hint="the read model did not answer the last read")
        else:
            self._reading = asyncio.ensure_future(asyncio.to_thread(self._read_incidents))
            self._reading.add_done_callback(_retrieve)
            try:
                counts = await asyncio.wait_for(asyncio.shield(self._reading), self.read_timeout)
            except Exception as exc:
                log.debug("gauges.incidents_unreadable", error=str(exc) or type(exc).__name__)
        opened, uncovered, overdue = counts
        self.metrics.incidents_open.set(opened)
        self.metrics.incidents_uncovered.set(uncovered)
        self.metrics.incidents_overdue.set(overdue)

    def _read_incidents(self) -> tuple[float, float, float]:
        try:
            conn = self.db.thread_connection()
            opened = queries.open_incident_count(conn)
            uncovered, overdue = queries.uncovered_counts(conn, time.time())
        except Exception:
            self.db.drop_thread_connection()
            raise
        return float(opened), float(uncovered), float(overdue)

    async def _ready(self) -> None:
        checks = dict.fromkeys(self._checks, False)
        if self._readying is not None and not self._readying.done():
            log.warning("gauges.readiness_still_checking")
        else:
            self._readying = asyncio.ensure_future(self.readiness())
            self._readying.add_done_callback(_retrieve)
            try:
                checks = await asyncio.wait_for(asyncio.shield(self._readying), self.read_timeout)
            except Exception as exc:
                log.debug("gauges.readiness_failed", error=str(exc) or type(exc).__name__)
        self._checks.update(checks)
        for check, ok in checks.items():
            self.metrics.ready.labels(check).set(1.0 if ok else 0.0)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Take a late result's exception, so a read that outlived its timeout does not log as unhandled."""
    if not future.cancelled():
        future.exception()
