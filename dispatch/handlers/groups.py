"""Group import: validate a roster whole, then append only the differences; group dissolution.

Invariants:
- an invalid roster appends nothing (RosterRejected counts every error of every kind and lists
  the first 1000 by line); neither does a dry run, nor an import that would unbind more numbers
  than its `max_unbound` (UnbindingRefused, decided before the first append);
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
  again. While appending, an import holds the file's bytes and its plan (one small op an event);
- every import's progress (state, rows read, changes and events written of their totals) and its
  outcome are kept for the last KEPT_IMPORTS imports of this process, by id;
- a member's absence is set or ended by `decide_member` through the unit of work (its member
  subject's last sequence expected; ids name the subject's key, the sequence and the command);
- a group is dissolved by its decider through the unit of work (each member's MemberUnbound, then
  GroupDissolved, with the group's last sequence expected), serialized with the imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec
import structlog

from dispatch.clock import Clock, utcnow
from dispatch.domain.absence import Absence, MemberCommand, MemberState, decide_member
from dispatch.domain.directory import (
    ChangeVillageSettings,
    DissolveGroup,
    GroupState,
    VillageState,
    decide_dissolve,
    decide_village_settings,
)
from dispatch.domain.errors import DomainError, InvalidCommand, InvalidTransition
from dispatch.domain.roster import (
    AggregateChange,
    Difference,
    DirectoryView,
    ImportPlan,
    ReadProgress,
    RosterError,
    RosterFile,
    RosterRejected,
    check_header,
    difference,
    plan_roster,
    scan_roster,
)
from dispatch.events import msgids
from dispatch.events.model import Actor, Event, GroupEvent, VillageEvent
from dispatch.events.subjects import InvalidToken, group_id, group_subject, member_subject, village_subject
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
# Imports whose progress `GroupService.progress` still answers for (the newest are kept).
KEPT_IMPORTS = 50


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
    members_moved: int = 0
    members_placed: int = 0
    languages_set: int = 0

    @classmethod
    def of(cls, plan: ImportPlan, moved: int = 0) -> ImportSummary:
        """The plan's counts (members_bound and members_unbound count the `moved` members too)."""
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
            members_moved=moved,
            members_placed=plan.members_placed,
            languages_set=plan.languages_set,
        )


class UnbindingRefused(InvalidTransition):
    """The roster would unbind more numbers than the caller confirmed (`max_unbound`): nothing written."""


ImportState = Literal["queued", "reading", "planning", "writing", "done", "rejected", "failed"]


@dataclass(slots=True)
class ImportProgress:
    """One import as it goes (`state`), what it has read and written of how much, and how it ended:
    the summary and difference, or the errors. The reading counters are written by the worker
    thread; the rest on the event loop."""

    import_id: str
    bytes_total: int
    dry_run: bool = False
    max_unbound: int | None = None
    state: ImportState = "queued"
    reading: ReadProgress = field(default_factory=ReadProgress)
    groups_in_file: int = 0
    changes_total: int = 0
    changes_written: int = 0
    events_total: int = 0
    events_written: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    summary: ImportSummary | None = None
    difference: Difference | None = None
    error: str | None = None
    status: int | None = None
    errors: list[RosterError] = field(default_factory=list)
    error_total: int = 0

    def view(self) -> dict[str, Any]:
        """What the API answers about it."""
        return {
            "import_id": self.import_id,
            "state": self.state,
            "dry_run": self.dry_run,
            "max_unbound": self.max_unbound,
            "bytes_total": self.bytes_total,
            "bytes_read": self.reading.bytes_read,
            "rows_parsed": self.reading.rows,
            "groups_in_file": self.groups_in_file,
            "changes_total": self.changes_total,
            "changes_written": self.changes_written,
            "events_total": self.events_total,
            "events_written": self.events_written,
            "elapsed_s": round((self.finished_at or time.time()) - self.started_at, 3),
            "summary": self.summary,
            "difference": self.difference,
            "error": self.error,
            "status": self.status,
            "errors": [{"line": e.line, "message": e.message} for e in self.errors],
            "error_total": self.error_total,
        }

    def rejected(self, exc: RosterRejected) -> None:
        """Ended by an invalid roster."""
        listed = f"; the first {len(exc.errors)} by line are listed" if exc.total > len(exc.errors) else ""
        self.end("rejected", f"roster rejected: {exc.total} error(s); nothing was imported{listed}", 422)
        self.errors, self.error_total = list(exc.errors), exc.total

    def end(self, state: ImportState, error: str | None = None, status: int | None = None) -> None:
        """Ended: `state`, with the error and the HTTP status it answers when not done."""
        self.state, self.error, self.status = state, error, status
        self.finished_at = time.time()


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
    """Deadline overrides in seconds, the village's IANA time zone and whether an answer recorded
    for someone else (a proxy answer) counts toward cover; null (or absent) means the service
    default (proxy answers count)."""

    ack_deadline_s: float | None = None
    escalate_after_s: float | None = None
    arrival_deadline_s: float | None = None
    time_zone: str | None = None
    proxy_counts: bool | None = None
    # neighbouring groups: their tier `alongside` the station (default), `before` it, or `off`; whether a
    # neighbour's accept covers as the leader half (default no); each group's neighbours (default: the
    # village's four groups nearest in their numbering)
    neighbours_order: Literal["alongside", "before", "off"] | None = None
    neighbour_covers: bool | None = None
    neighbours: dict[str, list[str]] | None = None

    def command(
        self, village: str, actor: Actor | None = None, expected_seq: int | None = None
    ) -> ChangeVillageSettings:
        """The domain's command for `village`, asked by `actor`, read at version `expected_seq` (None:
        whatever the version is now); checked by its decider."""
        return ChangeVillageSettings(
            village=village,
            ack_deadline_s=self.ack_deadline_s,
            escalate_after_s=self.escalate_after_s,
            arrival_deadline_s=self.arrival_deadline_s,
            time_zone=self.time_zone,
            proxy_counts=self.proxy_counts,
            neighbours_order=self.neighbours_order,
            neighbour_covers=self.neighbour_covers,
            neighbours={g: tuple(n) for g, n in self.neighbours.items()} if self.neighbours is not None else None,
            actor=actor,
            expected_seq=expected_seq,
        )


def attributed(event: Event, actor: Actor | None) -> Event:
    """A roster event naming who imported (or dissolved) it."""
    if actor is not None and isinstance(event, (GroupEvent, VillageEvent)):
        return msgspec.structs.replace(event, actor=actor)
    return event


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


class Groups:
    """Groups as the live directory holds them (dissolved ones too): the unit of work's aggregate."""

    def __init__(self, live: LiveDirectory) -> None:
        self.live = live

    async def load(self, key: str) -> Loaded[GroupState | None]:
        """The group (`<village>.<group>`) and its subject's last sequence, as this process has applied them."""
        state = self.live.directory.groups.get(key)
        village, _, group = key.partition(".")
        return Loaded(state, group_subject(village, group), state.last_seq if state else 0)

    def subject_of(self, key: str, event: Event) -> str:
        """A group's events go on its subject."""
        village, _, group = key.partition(".")
        return group_subject(village, group)


class Members:
    """Members as the live directory holds them: the unit of work's aggregate for absences."""

    def __init__(self, live: LiveDirectory) -> None:
        self.live = live

    async def load(self, key: str) -> Loaded[MemberState]:
        """The number's absence, whether it is bound, and its member subject's last sequence."""
        d = self.live.directory
        state = MemberState(phone=key, bound=d.knows(key), absence=d.absences.get(key))
        return Loaded(state, _member_subject(key), d.member_seqs.get(key, 0))

    def subject_of(self, key: str, event: Event) -> str:
        """A member's events go on its own subject."""
        return _member_subject(key)


def _member_subject(phone: str) -> str:
    try:
        return member_subject(phone)
    except InvalidToken as exc:
        raise InvalidCommand(str(exc)) from None


def _plan_releasing(file: RosterFile, view: DirectoryView, at: datetime) -> ImportPlan:
    """Plan (in a worker thread), then free the rows and the view there, a piece at a time."""
    try:
        return plan_roster(file, view, at)
    finally:
        file.release()
        view.release()


def _summarize(plan: ImportPlan) -> tuple[ImportSummary, Difference]:
    """The plan's summary and difference (in a worker thread)."""
    diff = difference(plan)
    return ImportSummary.of(plan, diff.counts["moved"]), diff


class GroupService:
    """Roster imports and village settings: validated, planned against the directory, appended."""

    def __init__(self, uow: UnitOfWork, live: LiveDirectory, *, region: str = "CN", clock: Clock = utcnow) -> None:
        self.uow = uow
        self.store = uow.store
        self.live = live
        self.region = region
        self.clock = clock
        self._lock = asyncio.Lock()
        self._imports: OrderedDict[str, ImportProgress] = OrderedDict()
        self._running: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        """Cancel the imports still running in the background (one cut short converges when
        imported again: each group's change is appended whole or not at all)."""
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def track(self, size: int, *, dry_run: bool = False, max_unbound: int | None = None) -> ImportProgress:
        """A new import's progress, answered by `progress` until KEPT_IMPORTS newer ones were tracked."""
        progress = ImportProgress(uuid.uuid4().hex, size, dry_run, max_unbound)
        self._imports[progress.import_id] = progress
        while len(self._imports) > KEPT_IMPORTS:
            self._imports.popitem(last=False)
        return progress

    def progress(self, import_id: str) -> ImportProgress | None:
        """An import this process ran or runs, by id (None: unknown, or forgotten)."""
        return self._imports.get(import_id)

    def start_import(
        self, roster: bytes, *, dry_run: bool = False, max_unbound: int | None = None, actor: Actor | None = None
    ) -> ImportProgress:
        """Import in the background (each event naming `actor`); follow it with `progress(import_id)`.
        A file with no roster header is refused at once: the answer is `rejected`, and nothing is queued."""
        progress = self.track(len(roster), dry_run=dry_run, max_unbound=max_unbound)
        try:
            check_header(roster, self.region)
        except RosterRejected as exc:
            progress.rejected(exc)
            return progress

        async def run() -> None:
            with contextlib.suppress(Exception):  # how it ended is in `progress`
                await self.import_roster(
                    roster, dry_run=dry_run, max_unbound=max_unbound, progress=progress, actor=actor
                )

        task = asyncio.get_running_loop().create_task(run())
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return progress

    async def import_roster(
        self,
        roster: str | bytes,
        *,
        dry_run: bool = False,
        max_unbound: int | None = None,
        progress: ImportProgress | None = None,
        actor: Actor | None = None,
    ) -> ImportSummary:
        """Import a roster (bytes: UTF-8 or GB18030) all or nothing, each event naming `actor`
        (who imported it); return what changed. A dry run
        plans and writes nothing; with `max_unbound`, a roster that would unbind more numbers is
        refused (UnbindingRefused) before anything is written. `progress` follows it and keeps how
        it ended (the summary and difference, or the errors)."""
        if progress is None:
            size = len(roster) if isinstance(roster, bytes) else len(roster.encode())
            progress = self.track(size, dry_run=dry_run, max_unbound=max_unbound)
        try:
            return await self._import(roster, dry_run, max_unbound, progress, actor)
        except RosterRejected as exc:
            progress.rejected(exc)
            raise
        except DomainError as exc:
            progress.end("rejected", exc.reason, exc.status)
            raise
        except Exception as exc:
            progress.end("failed", f"{type(exc).__name__}: {exc}", 503)
            raise
        except asyncio.CancelledError:
            progress.end("failed", "the service stopped during the import; import the file again", 503)
            raise

    async def _import(
        self,
        roster: str | bytes,
        dry_run: bool,
        max_unbound: int | None,
        progress: ImportProgress,
        actor: Actor | None = None,
    ) -> ImportSummary:
        async with self._lock:
            for attempt in range(MAX_ATTEMPTS):
                started = time.perf_counter()
                progress.state, progress.reading = "reading", ReadProgress()
                file = await asyncio.to_thread(scan_roster, roster, self.region, progress.reading)
                progress.state, progress.groups_in_file = "planning", len(file.groups)
                planning = time.perf_counter()
                view = DirectoryView()
                for _ in view.read(self.live.directory, file):
                    await asyncio.sleep(0)
                plan = await asyncio.to_thread(_plan_releasing, file, view, self.clock())
                digest = file.digest
                del file  # emptied in the worker; a conflict reads the roster again
                summary, diff = await asyncio.to_thread(_summarize, plan)
                progress.summary, progress.difference = summary, diff
                progress.changes_total, progress.events_total = len(plan.changes), summary.events
                unbinding = summary.members_unbound + summary.duty_desks_unbound
                if dry_run:
                    await asyncio.to_thread(plan.release)
                    progress.end("done")
                    return summary
                if max_unbound is not None and unbinding > max_unbound:
                    await asyncio.to_thread(plan.release)
                    raise UnbindingRefused(
                        f"the roster unbinds {unbinding} number(s), more than the {max_unbound} confirmed "
                        "(max_unbound); nothing was imported: see its difference (dry_run)"
                    )
                progress.state = "writing"
                appending = time.perf_counter()
                try:
                    await self._apply(plan, digest, progress, actor)
                except AppendConflict:
                    log.warning("groups.import_conflict", attempt=attempt)
                    await asyncio.to_thread(plan.release)
                    progress.changes_written = progress.events_written = 0
                    await asyncio.sleep(0.1 * (attempt + 1))
                    continue
                await asyncio.to_thread(plan.release)
                if summary.events >= FREEZE_AFTER_EVENTS:
                    self.live.settle()
                done = time.perf_counter()
                progress.end("done")
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

    async def set_village_settings(
        self, village: str, settings: VillageSettings, *, actor: Actor | None = None, expected_seq: int | None = None
    ) -> None:
        """Record a village's settings, changed by `actor` (Stale unless the village is still at version
        `expected_seq` when given); incidents raised afterwards use them."""
        command = settings.command(village, actor, expected_seq)
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

    async def decide_absence(self, command: MemberCommand) -> Absence | None:
        """Set or end a member's absence, decided on the member as this process's directory holds it
        and appended with its subject's last sequence expected (a concurrent change is decided
        again); returns once the directory has applied it (so the next alarm routed here rings the
        substitute), with the absence now held (None: none)."""
        phone = command.phone
        subject = _member_subject(phone)
        encoded = msgspec.msgpack.encode(command)

        def ids(i: int, event: Event) -> str:
            # decided on the state `load` read just before, with no wait in between
            return msgids.member_change(subject, self.live.directory.member_seqs.get(phone, 0), encoded)(i, event)

        decided = await self.uow.decide(
            Members(self.live), phone, lambda state, now: decide_member(state, command, now), ids
        )
        if decided.seqs:
            await self.live.wait_for({subject: decided.seqs[-1]})
        return self.live.directory.absences.get(phone)

    async def dissolve_group(self, village: str, group: str, *, actor: Actor | None = None) -> int:
        """Dissolve a group (NotFound if it never was), done by `actor`: its members unbound, then the
        group; return how many members were unbound (0: it was dissolved already). Its open incidents
        can still close."""
        command = DissolveGroup(village=village, group=group)
        key = group_id(village, group)

        def ids(i: int, event: Event) -> str:
            # decided on the state `load` read just before, with no wait in between
            state = self.live.directory.groups.get(key)
            return msgids.group_dissolved(village, group, state.last_seq if state else 0)(i, event)

        async with self._lock:
            decided = await self.uow.decide(
                Groups(self.live),
                key,
                lambda state, now: [attributed(e, actor) for e in decide_dissolve(state, command, now)],
                ids,
            )
        if not decided.events:
            return 0
        await self.live.wait_for({group_subject(village, group): decided.seqs[-1]})
        log.info("groups.dissolved", village=village, group=group, members_unbound=len(decided.events) - 1)
        return len(decided.events) - 1

    async def _apply(self, plan: ImportPlan, digest: str, progress: ImportProgress, actor: Actor | None = None) -> None:
        # The directory follows groups and villages each in stream order, so waiting for the last
        # subject of each kind in a batch waits for the whole batch. The next batch waits for that:
        # the directory (on this loop) never lags an import by more than a batch.
        villages = village_subject("")
        for chunk in batches(plan.changes):
            messages = [
                Outgoing(
                    change.subject,
                    attributed(event, actor),
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
            progress.changes_written += len(chunk)
            progress.events_written += len(messages)
