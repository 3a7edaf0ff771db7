"""`dispatch replay`: drop every SQL projection and rebuild it from the log (`dispatch.projections.rebuild`).

Invariants: when it returns 0, each projection's checkpoint is at the last event the log held when
its rebuild started, its rows are exactly a fold of the log (the same code path as the live
projection), it is its family's active version, and every older version's tables are gone.
Run it with the service stopped: with the embedded server it refuses while a service holds the
data directory.

Progress goes to stderr: a bar redrawn in place on a terminal, a plain line every few seconds
otherwise (a log file or CI); the final counts go to stdout.
"""

from __future__ import annotations

import time

from dispatch.cli.offline import open_log
from dispatch.projections.rebuild import rebuild_all
from dispatch.projections.registry import all_projections
from dispatch.projections.sql import Database
from dispatch.settings import Settings


async def replay(settings: Settings) -> int:
    started = time.monotonic()
    async with open_log(settings, use_running=False) as nc:
        db = Database(settings.db_url)
        applied = await rebuild_all(nc, db, all_projections())
    for name, count in applied.items():
        print(f"{name}: rebuilt from {count} events")
    print(f"replayed {sum(applied.values())} events into {db.dialect} in {time.monotonic() - started:.1f} s")
    return 0
