"""Group import: validate a roster whole, then append only the differences.

Invariants:
- an invalid roster appends nothing (RosterRejected lists every error with its line);
- each group's (and village's) events are appended with the expected sequence the directory
  had for it, so a concurrent change to the same group is a conflict, re-planned from fresh
  state; imports within one process are serialized;
- a group's events are never split across atomic batches; a roster larger than one batch is
  applied batch by batch and, if interrupted, converges when imported again;
- the import returns after this process's directory has applied what it appended.
"""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
import structlog

from dispatch.clock import Clock, utcnow
from dispatch.domain.errors import InvalidCommand
from dispatch.domain.roster import AggregateChange, ImportPlan, parse_roster, plan_import
from dispatch.events.model import VillageSettingsChanged
from dispatch.events.subjects import InvalidToken, check_token, village_subject
from dispatch.projections.directory import LiveDirectory
from dispatch.store.batch import MAX_BATCH
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 5
FREEZE_AFTER_EVENTS = 1000


class ImportSummary(msgspec.Struct, frozen=True, kw_only=True):
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


def batches(changes: list[AggregateChange]) -> list[list[AggregateChange]]:
    out: list[list[AggregateChange]] = []
    current: list[AggregateChange] = []
    size = 0
    for change in changes:
        if current and size + len(change.events) > MAX_BATCH:
            out.append(current)
            current, size = [], 0
        current.append(change)
        size += len(change.events)
    if current:
        out.append(current)
    return out


class VillageSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Deadline overrides in seconds; null (or absent) means the service default."""

    ack_deadline_s: float | None = None
    escalate_after_s: float | None = None
    arrival_deadline_s: float | None = None

    def check(self) -> None:
        values = [v for v in (self.ack_deadline_s, self.escalate_after_s, self.arrival_deadline_s) if v is not None]
        if any(not 1 <= v <= 86_400 for v in values):
            raise InvalidCommand("deadlines must be between 1 and 86400 seconds")
        if (
            self.ack_deadline_s is not None
            and self.escalate_after_s is not None
            and self.ack_deadline_s > self.escalate_after_s
        ):
            raise InvalidCommand("ack_deadline_s must not exceed escalate_after_s")


class GroupService:
    def __init__(self, store: EventStore, live: LiveDirectory, *, region: str = "CN", clock: Clock = utcnow) -> None:
        self.store = store
        self.live = live
        self.region = region
        self.clock = clock
        self._lock = asyncio.Lock()

    async def import_roster(self, text: str) -> ImportSummary:
        rows = parse_roster(text, self.region)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        async with self._lock:
            for attempt in range(MAX_ATTEMPTS):
                plan = plan_import(self.live.directory, rows, self.clock())
                try:
                    await self._apply(plan, digest)
                except AppendConflict:
                    log.warning("groups.import_conflict", attempt=attempt)
                    await asyncio.sleep(0.1 * (attempt + 1))
                    continue
                if plan.event_count >= FREEZE_AFTER_EVENTS:
                    self.live.settle()
                log.info("groups.imported", groups=plan.groups_in_file, events=plan.event_count)
                return ImportSummary.of(plan)
        raise AppendConflict("the directory kept changing during the import; try again")

    async def set_village_settings(self, village: str, settings: VillageSettings) -> None:
        """Record a village's deadlines; incidents raised afterwards use them."""
        try:
            check_token("village", village)
        except InvalidToken as exc:
            raise InvalidCommand(str(exc)) from None
        settings.check()
        async with self._lock:
            for attempt in range(MAX_ATTEMPTS):
                state = self.live.directory.villages.get(village)
                event = VillageSettingsChanged(
                    at=self.clock(),
                    village=village,
                    ack_deadline_s=settings.ack_deadline_s,
                    escalate_after_s=settings.escalate_after_s,
                    arrival_deadline_s=settings.arrival_deadline_s,
                )
                subject = village_subject(village)
                try:
                    [seq] = await self.store.append(
                        [
                            Outgoing(
                                subject,
                                event,
                                f"village:{village}:{state.last_seq if state else 0}:settings",
                                expected_seq=state.last_seq if state else 0,
                            )
                        ]
                    )
                except AppendConflict:
                    await asyncio.sleep(0.1 * (attempt + 1))
                    continue
                await self.live.wait_for({subject: seq})
                return
        raise AppendConflict("the village kept changing; try again")

    async def _apply(self, plan: ImportPlan, digest: str) -> None:
        reached: dict[str, int] = {}
        for chunk in batches(plan.changes):
            messages = [
                Outgoing(
                    change.subject,
                    event,
                    f"roster:{digest}:{change.subject}:{change.expected_seq}:{i}",
                    expected_seq=change.expected_seq if i == 0 else None,
                )
                for change in chunk
                for i, event in enumerate(change.events)
            ]
            seqs = await self.store.append(messages)
            for message, seq in zip(messages, seqs, strict=True):
                reached[message.subject] = seq
        await self.live.wait_for(reached)
