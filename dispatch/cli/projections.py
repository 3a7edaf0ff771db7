"""`dispatch projections run | status`: a read-side worker, and where every read model stands.

`run` keeps the SQL projections up to date and does nothing else (no HTTP, no alarms): with
PostgreSQL, several of them and several `dispatch serve` processes can share one read side; the
checkpoint lock makes each event apply once whoever applies it. It stops on SIGINT/SIGTERM.
`status` lists each projection version: active / building / retired, its checkpoint, and how far
it is behind the log (in stream sequence numbers: the last matching event's sequence minus the
checkpoint; `-` when the log cannot be reached).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from dispatch.cli.offline import open_log
from dispatch.domain.timezones import human_time
from dispatch.projections.registry import all_projections
from dispatch.projections.runner import ACTIVE, ProjectionRunner, ensure_bookkeeping, last_matching
from dispatch.projections.sql import Database
from dispatch.settings import Settings

REPORT_EVERY_S = 5.0


async def run_projections(settings: Settings, *, report_every: float = REPORT_EVERY_S) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_log(settings) as nc:
        db = Database(settings.db_url)
        runners = [ProjectionRunner(nc, db, projection) for projection in all_projections()]
        for runner in runners:
            await runner.start()
        print(f"projecting into {db.dialect}: {', '.join(r.name for r in runners)}", flush=True)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), report_every)
                print(
                    "  ".join(
                        f"{r.name}: {r.position} ({'active' if r.active else r.progress()}, lag {r.lag():.0f})"
                        for r in runners
                    ),
                    flush=True,
                )
        finally:
            for runner in runners:
                await runner.stop()
    return 0


async def projection_status(settings: Settings) -> int:
    db = Database(settings.db_url)

    def read() -> list[tuple[object, ...]]:
        conn = db.connect()
        try:
            ensure_bookkeeping(conn)
            return conn.query(
                "SELECT v.name, v.family, v.version, v.state, v.changed_at, c.position, c.updated_at "
                "FROM projection_versions v LEFT JOIN projection_checkpoints c ON c.name = v.name "
                "ORDER BY v.family, v.version"
            )
        finally:
            conn.close()

    rows = await asyncio.to_thread(read)
    heads: dict[str, int] = {}
    with contextlib.suppress(Exception):
        async with open_log(settings) as nc:
            for projection in all_projections():
                heads[projection.family] = await last_matching(nc, projection.filter_subjects)
    print(f"{'projection':<16}{'state':<10}{'checkpoint':>12}{'behind':>10}  since")
    for name, family, _, state, changed_at, position, _ in rows:
        head = heads.get(str(family))
        done = int(position or 0)  # type: ignore[call-overload]
        behind = "-" if head is None else str(max(0, head - done))
        since = human_time(float(changed_at), settings.time_zone)  # type: ignore[arg-type]
        marker = "*" if state == ACTIVE else " "
        print(f"{marker}{name!s:<15}{state!s:<10}{done:>12}{behind:>10}  {since}")
    if not rows:
        print("(no projections yet: start `dispatch serve` or run `dispatch replay`)")
    return 0


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.projections_command == "run":
        return asyncio.run(run_projections(settings))
    return asyncio.run(projection_status(settings))
