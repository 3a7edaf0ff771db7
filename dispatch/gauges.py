"""Gauges read in the background, so a scrape never waits on NATS or the database.

Invariants:
- every `every` seconds (and once at start): the delivery work queue's depth per channel (its
  consumers' pending and unacknowledged jobs, from the server), the open / uncovered / overdue
  incidents (the read model, in a worker thread, never on the event loop), and each readiness check;
  villages new to the directory get their alarm counter at 0, so an alert's `increase()` sees
  their first alarm;
- a source that cannot be read sets its gauges to NaN ("unknown"), never to a stale or zero value
  that would look healthy; the failure shows as `dispatch_ready{check=...} 0`;
- one refresh failing never stops the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import structlog
from nats.aio.client import Client as NATS

from dispatch.metrics import Metrics
from dispatch.projections import queries
from dispatch.projections.sql import Database
from dispatch.store.provision import delivery_consumer

log = structlog.get_logger(__name__)

REFRESH_EVERY_S = 5.0


class GaugeRefresher:
    def __init__(
        self,
        metrics: Metrics,
        *,
        nc: NATS,
        db: Database,
        channels: Sequence[str],
        readiness: Callable[[], Awaitable[dict[str, bool]]],
        villages: Callable[[], Iterable[str]] = tuple,
        every: float = REFRESH_EVERY_S,
    ) -> None:
        self.villages = villages
        self.metrics = metrics
        self.nc = nc
        self.db = db
        self.channels = list(channels)
        self.readiness = readiness
        self.every = every
        self._task: asyncio.Task[None] | None = None
        self._checks: set[str] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gauges")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

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
        await asyncio.gather(self._queue_depth(), self._incidents(), self._ready())
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

    async def _incidents(self) -> None:
        try:
            opened, uncovered, overdue = await asyncio.to_thread(self._read_incidents)
        except Exception as exc:
            log.debug("gauges.incidents_unreadable", error=str(exc) or type(exc).__name__)
            await asyncio.to_thread(self.db.drop_thread_connection)
            opened = uncovered = overdue = math.nan
        self.metrics.incidents_open.set(opened)
        self.metrics.incidents_uncovered.set(uncovered)
        self.metrics.incidents_overdue.set(overdue)

    def _read_incidents(self) -> tuple[float, float, float]:
        conn = self.db.thread_connection()
        opened = queries.open_incident_count(conn)
        uncovered, overdue = queries.uncovered_counts(conn, time.time())
        return float(opened), float(uncovered), float(overdue)

    async def _ready(self) -> None:
        try:
            checks = await self.readiness()
        except Exception as exc:
            log.debug("gauges.readiness_failed", error=str(exc) or type(exc).__name__)
            checks = dict.fromkeys(self._checks, False)
        self._checks.update(checks)
        for check, ok in checks.items():
            self.metrics.ready.labels(check).set(1.0 if ok else 0.0)
