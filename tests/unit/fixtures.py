"""Shared builders for unit tests: a clock, and a directory holding a roster (the demo-like village
of `tests.rosters` unless told otherwise)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatch.domain.directory import Directory
from dispatch.domain.roster import parse_roster, plan_import
from tests.rosters import ROSTER

T0 = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)

__all__ = ["ROSTER", "T0", "at", "directory_with"]


def at(seconds: float = 0) -> datetime:
    return T0 + timedelta(seconds=seconds)


def directory_with(text: str = ROSTER) -> Directory:
    directory = Directory()
    plan = plan_import(directory, parse_roster(text), T0)
    seq = 0
    for change in plan.changes:
        for event in change.events:
            seq += 1
            directory.apply(event, seq)
    return directory
