"""Group import: validate a roster whole, then append only the differences.

Invariants:
- an invalid roster appends nothing (RosterRejected counts every error and lists the first 1000
  by line);
- each group's (and village's) events are appended with the expected sequence the directory
  had for it, so a concurrent change to the same group is a conflict, re-planned from fresh
  state; imports within one process are serialized (parsing too: one file's rows in memory at a
  time);
- a group's events are never split across atomic batches; a roster larger than one batch is
  applied batch by batch and, if interrupted, converges when imported again;
- the import returns after this process's directory has applied what it appended (and each batch
  is appended only once the directory has applied the one before);
- no step holds the event loop for long, whatever the file's size (up to the API's 64 MiB, 2M
  rows): decoding, parsing and planning run in a worker thread (the switch interval set at start
  hands the loop the GIL within 0.5 ms), the directory is read on the loop a slice at a time, and
  the rows are dropped (in the worker, a piece at a time) once planned; a conflict reads the file
  again. While appending, an import holds the file's bytes and its plan (one small op an event).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime

import msgspec
import structlog

from dispatch.clock import Clock, utcnow
from dispatch.domain.directory import ChangeVillageSettings, VillageState, decide_village_settings
from dispatch.domain.roster import AggregateChange, DirectoryView, ImportPlan, RosterFile, plan_roster, scan_roster
from dispatch.events import msgids
from dispatch.events.model import Event
from dispatch.events.subjects import village_subject
from dispatch.handlers.uow import Loaded, UnitOfWork
from dispatch.projections.directory import LiveDirectory
from dispatch.store.eventstore import AppendConflict, Outgoing

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 5
FREEZE_AFTER_EVENTS = 1000
# Events per atomic batch of an import (the store takes up to 1000). A call's decision waits in
# the log's write path behind the batch being stored, so smaller batches keep calls quick during
# an import, at some cost to the import (docs/benchmarks.md, "Measured reasons in the code").
IMPORT_BATCH = 100


class ImportSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What an import changed, as the API answers it."""

    groups_in_file: int
    groups_formed: int
    groups_changed: int
    groups_unchanged: int
    members_bound: int
    members_unbound: int
    roles_assigned: int
    members_renamed: int
    duty_desks_bound: int
    duty_desks_unbound: int
    events: int

    @classmethod
    def of(cls, plan: ImportPlan) -> ImportSummary:
        """The plan's counts."""
        return cls(
            groups_in_file=plan.groups_in_file,
            groups_formed=plan.groups_formed,
            groups_changed=plan.groups_changed,
            groups_unchanged=plan.groups_unchanged,
            members_bound=plan.members_bound,
            members_unbound=plan.members_unbound,
            roles_assigned=plan.roles_assigned,
            members_renamed=plan.members_renamed,
            duty_desks_bound=plan.duty_desks_bound,
            duty_desks_unbound=plan.duty_desks_unbound,
            events=plan.event_count,
        )


def batches(changes: list[AggregateChange], limit: int = IMPORT_BATCH) -> Iterator[list[AggregateChange]]:
    """Changes in order, cut into batches of at most `limit` events (more only for one group that
    has more alone), never splitting a change; cut as they are needed (200k changes at once would
    hold the loop)."""
    current: list[AggregateChange] = []
    size = 0
    for change in changes:
        if current and size + change.size > limit:
            yield current
            current, size = [], 0
        current.append(change)
        size += change.size
    if current:
        yield current


class VillageSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Deadline overrides in seconds and the village's IANA time zone; null (or absent) means the
    service default."""

    ack_deadline_s: float | None = None
    escalate_after_s: float | None = None
    arrival_deadline_s: float | None = None
    time_zone: str | None = None

    def command(self, village: str) -> ChangeVillageSettings:
        """The domain's command for `village` (checked by its decider)."""
        return ChangeVillageSettings(
            village=village,
            ack_deadline_s=self.ack_deadline_s,
            escalate_after_s=self.escalate_after_s,
            arrival_deadline_s=self.arrival_deadline_s,
            time_zone=self.time_zone,
        )


class Villages:
    """Villages as the live directory holds them (it follows the log): the unit of work's aggregate."""

    def __init__(self, live: LiveDirectory) -> None:
        self.live = live

    async def load(self, key: str) -> Loaded[VillageState | None]:
        """The village's settings and its subject's last sequence, as this process has applied them."""
        state = self.live.directory.villages.get(key)
        return Loaded(state, village_subject(key), state.last_seq if state else 0)

    def subject_of(self, key: str, event: Event) -> str:
        """A village's events go on its subject."""
        return village_subject(key)


def _plan_releasing(file: RosterFile, view: DirectoryView, at: datetime) -> ImportPlan:
    """Plan (in a worker thread), then free the rows and the view there, a piece at a time."""
    try:
        return plan_roster(file, view, at)
    finally:
        file.release()
        view.release()


def _summary_releasing(plan: ImportPlan) -> ImportSummary:
    """The plan's summary, then its changes freed (in a worker thread, a piece at a time)."""
    summary = ImportSummary.of(plan)
    plan.release()
    return summary


class GroupService:
    """Roster imports and village settings: validated, planned against the directory, appended."""

    def __init__(self, uow: UnitOfWork, live: LiveDirectory, *, region: str = "CN", clock: Clock = utcnow) -> None:
        self.uow = uow
        self.store = uow.store
        self.live = live
        self.region = region
        self.clock = clock
        self._lock = asyncio.Lock()

    async def import_roster(self, roster: str | bytes) -> ImportSummary:
        """Import a roster (bytes: UTF-8 or GB18030) all or nothing; return what changed."""
        async with self._lock:
            for attempt in range(MAX_ATTEMPTS):
                started = time.perf_counter()
                file = await asyncio.to_thread(scan_roster, roster, self.region)
                planning = time.perf_counter()
                view = DirectoryView()
                for _ in view.read(self.live.directory, file):
                    await asyncio.sleep(0)
                plan = await asyncio.to_thread(_plan_releasing, file, view, self.clock())
                digest = file.digest
                del file  # emptied in the worker; a conflict reads the roster again
                appending = time.perf_counter()
                try:
                    await self._apply(plan, digest)
                except AppendConflict:
                    log.warning("groups.import_conflict", attempt=attempt)
                    await asyncio.to_thread(plan.release)
                    await asyncio.sleep(0.1 * (attempt + 1))
                    continue
                summary = await asyncio.to_thread(_summary_releasing, plan)
                if summary.events >= FREEZE_AFTER_EVENTS:
                    self.live.settle()
                done = time.perf_counter()
                log.info(
                    "groups.imported",
                    groups=summary.groups_in_file,
                    events=summary.events,
                    parse_s=round(planning - started, 3),
                    plan_s=round(appending - planning, 3),
                    append_s=round(done - appending, 3),
                )
                return summary
        raise AppendConflict("the directory kept changing during the import; try again")

    async def set_village_settings(self, village: str, settings: VillageSettings) -> None:
        """Record a village's deadlines; incidents raised afterwards use them."""
        command = settings.command(village)
        villages = Villages(self.live)

        def ids(_i: int, _event: Event) -> str:
            # decided on the state `load` read just before, with no wait in between
            state = self.live.directory.villages.get(village)
            return msgids.village_settings(village, state.last_seq if state else 0)

        async with self._lock:
            decided = await self.uow.decide(
                villages, village, lambda state, now: decide_village_settings(state, command, now), ids
            )
        await self.live.wait_for({village_subject(village): decided.seqs[-1]})

    async def _apply(self, plan: ImportPlan, digest: str) -> None:
        # The directory follows groups and villages each in stream order, so waiting for the last
        # subject of each kind in a batch waits for the whole batch. The next batch waits for that:
        # the directory (on this loop) never lags an import by more than a batch.
        villages = village_subject("")
        for chunk in batches(plan.changes):
            messages = [
                Outgoing(
                    change.subject,
                    event,
                    msgids.roster_change(digest, change.subject, change.expected_seq)(i, event),
                    expected_seq=change.expected_seq if i == 0 else None,
                )
                for change in chunk
                for i, event in enumerate(change.events)
            ]
            seqs = await self.store.append(messages)
            latest: dict[bool, tuple[str, int]] = {}
            for message, seq in zip(messages, seqs, strict=True):
                latest[message.subject.startswith(villages)] = (message.subject, seq)
            await self.live.wait_for(dict(latest.values()))
