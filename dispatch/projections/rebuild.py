"""Rebuild SQL projections from the log: what `dispatch replay` runs, and the benchmarks and tests.

Invariants: when `rebuild_all` returns, each projection's checkpoint is at the last event the log
held when its rebuild started, its rows are exactly a fold of the log (the same code path as the
live projection), it is its family's active version, and every older version's tables are gone.

Progress goes to stderr: a bar redrawn in place on a terminal, a plain line every few seconds
otherwise (a log file or CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from nats.aio.client import Client as NATS

from dispatch.projections.runner import Projection, ProjectionRunner, drop, drop_retired, last_matching, take_over
from dispatch.projections.sql import Database

BAR = 30
REBUILD_LINGER_S = 0.01
LINE_EVERY_S = 5.0


class Progress:
    """Draws a rebuild's progress: a bar on a terminal, a line every LINE_EVERY_S otherwise."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, every: float = LINE_EVERY_S) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self._last_line = -math.inf

    def update(self, name: str, done: int, target: int, applied: int, elapsed: float) -> None:
        share = min(1.0, done / target) if target else 1.0
        rate = applied / elapsed if elapsed > 0 else 0.0
        self.show(
            name,
            share,
            f"{done}/{target}  {rate:,.0f} events/s",
            f"({done}/{target}), {applied} events applied, {rate:,.0f} events/s",
        )

    def show(self, name: str, share: float, bar_text: str, line_text: str | None = None) -> None:
        """Draw `share` (0-1) of `name` done: on a terminal the bar and `bar_text`, redrawn in place;
        otherwise a line with `line_text` (default `bar_text`) every `every` seconds."""
        if self.tty:
            bar = "#" * int(share * BAR)
            self.stream.write(f"\r{name:<14} [{bar:<{BAR}}] {share:6.1%}  {bar_text}")
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last_line >= self.every:
            self._last_line = now
            self.stream.write(f"{name}: {share:.1%} {line_text if line_text is not None else bar_text}\n")
            self.stream.flush()

    def finish(self, name: str, applied: int, elapsed: float) -> None:
        if self.tty:
            self.stream.write("\n")
        self.stream.write(f"{name}: done, {applied} events in {elapsed:.1f} s\n")
        self.stream.flush()
        self._last_line = -math.inf


async def rebuild(nc: NATS, db: Database, projection: Projection, *, progress: Progress | bool = True) -> int:
    """Drop `projection` and rebuild it up to the end of the log as it is now; return the events applied.

    The cyclic garbage collector is paused meanwhile: a rebuild allocates millions of short-lived,
    acyclic objects, and collections over them cost a fifth of the time, measured. Batches linger
    only 10 ms: nothing else competes for the database, and the last batch is not held back."""
    reporter = progress if isinstance(progress, Progress) else (Progress() if progress else None)
    await asyncio.to_thread(lambda: drop(db.thread_connection(), projection))
    target = await last_matching(nc, projection.filter_subjects)
    runner = ProjectionRunner(nc, db, projection, linger=REBUILD_LINGER_S)
    started = time.monotonic()
    collecting = gc.isenabled()
    gc.disable()
    await runner.start()
    try:
        while runner.position < target:
            with contextlib.suppress(TimeoutError):
                await runner.wait_for(target, timeout=0.2)
            if reporter is not None:
                reporter.update(projection.name, runner.position, target, runner.applied, time.monotonic() - started)
    finally:
        await runner.stop()
        if collecting:
            gc.enable()
    await asyncio.to_thread(lambda: take_over(db.thread_connection(), projection))
    if reporter is not None:
        reporter.update(projection.name, runner.position, target, runner.applied, time.monotonic() - started)
        reporter.finish(projection.name, runner.applied, time.monotonic() - started)
    return runner.applied


async def rebuild_all(
    nc: NATS, db: Database, projections: Sequence[Projection], *, progress: Progress | bool = True
) -> dict[str, int]:
    """Rebuild each projection, then drop every retired version of their families."""
    applied = {}
    for projection in projections:
        applied[projection.name] = await rebuild(nc, db, projection, progress=progress)
        await asyncio.to_thread(_drop_older, db, projection)
    return applied


def _drop_older(db: Database, projection: Projection) -> None:
    drop_retired(db.thread_connection(), projection.family, older_than=None, keep=projection.name)
