"""`dispatch replay`: drop every SQL projection and rebuild it from the log.

Invariant: when it returns 0, each projection's checkpoint equals the last matching event in the
log and its rows are exactly a fold of the log (the same code path as live projection).
Run it with the service stopped: with the embedded server it refuses while a service holds
the data directory.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from nats.aio.client import Client as NATS

from dispatch.offline import open_log
from dispatch.projections.incidents import IncidentsProjection
from dispatch.projections.runner import Projection, ProjectionRunner, drop
from dispatch.projections.sql import Database
from dispatch.settings import Settings

PROJECTIONS: tuple[type[IncidentsProjection], ...] = (IncidentsProjection,)


async def _last_matching(nc: NATS, subject: str) -> int:
    reply = await nc.request(
        "$JS.API.DIRECT.GET.DISPATCH_EVENTS", json.dumps({"last_by_subj": subject}).encode(), timeout=5
    )
    if (reply.headers or {}).get("Status"):
        return 0
    return int((reply.headers or {}).get("Nats-Sequence", "0"))


async def rebuild(nc: NATS, db: Database, projection: Projection, *, progress: bool = True) -> int:
    await asyncio.to_thread(lambda: drop(db.thread_connection(), projection))
    target = await _last_matching(nc, projection.filter_subject)
    runner = ProjectionRunner(nc, db, projection)
    started = time.monotonic()
    await runner.start()
    try:
        while runner.position < target:
            await asyncio.sleep(0.2)
            if progress:
                done = runner.position / target if target else 1.0
                bar = "#" * int(done * 30)
                rate = runner.applied / max(time.monotonic() - started, 1e-6)
                print(
                    f"\r{projection.name:<16} [{bar:<30}] {runner.position}/{target} ({rate:,.0f} ev/s)",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        await runner.stop()
    if progress:
        print(file=sys.stderr)
    return runner.applied


async def replay(settings: Settings) -> int:
    async with open_log(settings, use_running=False) as nc:
        db = Database(settings.db_url)
        total = 0
        for cls in PROJECTIONS:
            applied = await rebuild(nc, db, cls())
            total += applied
            print(f"{cls.name}: rebuilt from {applied} events")
        print(f"replayed {total} events into {db.dialect}")
    return 0
