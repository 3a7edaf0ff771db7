"""Ingress: a call from a gateway (or the API, SMS, a NATS subject) becomes an incident or joins one.

Invariants:
- the answer is given only after the decision is durably in the log; when the log cannot be
  reached the caller is told so (StoreUnavailable -> 503) and the gateway retries;
- a line (group, multi-group caller, or unknown number) has at most one open incident: the
  incident of a line's epoch has a deterministic id and is opened with expected sequence 0, so of
  two callers racing to open it one wins and the other merges into it;
- the same call id always gets the same answer and alerts nobody twice: the open incident knows
  the call ids it holds, and the call's routing is indexed on its own subject (written after the
  decision; a retry finds the decision and writes the index if a crash left it out); the index is
  on DISPATCH_INDEX, off the log's write path, and read together with the line in one round trip;
- a closed incident whose line was not yet advanced is repaired by the next call (LineClosed);
- a call that opens an incident reads once (one round trip): the call index, the line and the
  incident of the line's last epoch seen here are read together, and the open's expected sequence 0 catches
  any incident opened since (a stale guess costs one more read, never a wrong decision);
- a number in no group is never dropped: it raises an UnregisteredCall for the duty desk;
- no atomic batch on this path: on a file stream each batch costs ~3 ms and batches serialize;
- a caller who floods is absorbed into the open incident past a budget (`dispatch.handlers.flood`);
  a first call is never absorbed, and nothing here ever refuses a call.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from typing import Annotated

import msgspec
import structlog

from dispatch.clock import Clock, utcnow
from dispatch.domain.directory import Deadlines, Directory
from dispatch.domain.incident import (
    DEFAULT_DEADLINES,
    IncidentState,
    IncomingCall,
    Quorum,
    Route,
    fold,
    incident_id_for,
    line_closed,
    line_closed_msg_id,
    open_incident,
    repeat_call,
    route_call,
)
from dispatch.domain.phone import cn_mobile_candidate, try_normalize
from dispatch.events.model import (
    CallChannel,
    CallRouted,
    CallStatus,
    IncidentCancelled,
    IncidentResolved,
    LineClosed,
    Person,
)
from dispatch.events.subjects import call_index_subjects, call_key, call_subject, incident_subject, line_subject
from dispatch.handlers.flood import CallerFlood
from dispatch.metrics import Metrics
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing, Recorded, StoreUnavailable

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 10
EPOCHS_REMEMBERED = 200_000


class CallRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A call as the gateway reports it; a caller that is empty (withheld) or no phone number is never refused."""

    call_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    caller: Annotated[str, msgspec.Meta(max_length=64)]
    callee: Annotated[str, msgspec.Meta(max_length=64)] = "6995"
    at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    channel: CallChannel = "voice"


class CallResult(msgspec.Struct, frozen=True, kw_only=True):
    incident_id: str
    status: CallStatus
    duplicate: bool = False


class CallService:
    def __init__(
        self,
        store: EventStore,
        directory: Directory,
        *,
        quorum: Quorum,
        fallback_duty: tuple[Person, ...],
        metrics: Metrics,
        deadlines: Deadlines = DEFAULT_DEADLINES,
        region: str = "CN",
        clock: Clock = utcnow,
        flood: CallerFlood | None = None,
    ) -> None:
        self.flood = flood or CallerFlood()
        self.store = store
        self.directory = directory
        self.quorum = quorum
        self.fallback_duty = fallback_duty
        self.deadlines = deadlines
        self.metrics = metrics
        self.region = region
        self.clock = clock
        self._epochs: dict[str, int] = {}

    def _remember_epoch(self, line: str, epoch: int) -> None:
        if len(self._epochs) >= EPOCHS_REMEMBERED and line not in self._epochs:
            self._epochs.clear()
        self._epochs[line] = epoch

    def caller_e164(self, raw: str) -> str | None:
        """The caller as E.164; a Chinese mobile already in the directory skips the full parse."""
        if self.region == "CN":
            candidate = cn_mobile_candidate(raw)
            if candidate is not None and self.directory.knows(candidate):
                return candidate
        return try_normalize(raw, self.region)

    async def call(self, req: CallRequest) -> CallResult:
        now = self.clock()
        call = IncomingCall(
            call_id=req.call_id,
            caller_raw=req.caller,
            caller=self.caller_e164(req.caller),
            callee=req.callee,
            channel=req.channel,
            called_at=req.at or now,
            at=now,
        )
        caller = call.caller or _digits_key(req.caller)
        try:
            absorbed = await self._absorbed(caller, call) if caller else None
            result = absorbed or await self._route(call)
        except StoreUnavailable:
            self.metrics.store_unavailable.labels("call").inc()
            self.metrics.calls.labels(req.channel, "unavailable").inc()
            raise
        if absorbed is not None:
            self.metrics.calls.labels(req.channel, "duplicate" if absorbed.duplicate else "absorbed").inc()
            return absorbed
        if caller:
            self.flood.routed(caller, result.incident_id)
        self.metrics.calls.labels(req.channel, "duplicate" if result.duplicate else result.status).inc()
        return result

    async def _absorbed(self, caller: str, call: IncomingCall) -> CallResult | None:
        """The answer for a call of a flooding caller into its still-open incident, else None (route it)."""
        incident_id = self.flood.admit(caller)
        if incident_id is None:
            return None
        subject = incident_subject(incident_id)
        known = await self.store.last_of([*call_index_subjects(call.call_id), subject])
        duplicate = _answered(known, call.call_id)
        if duplicate is not None:
            return duplicate
        last = known.get(subject)
        if last is None or isinstance(last.event, (IncidentResolved, IncidentCancelled)):
            return None
        count = self.flood.count_absorbed(caller)
        if count in (1, 10, 100, 1000) or count % 10_000 == 0:
            log.warning("call.flood_absorbed", incident_id=incident_id, absorbed=count, channel=call.channel)
        return CallResult(incident_id=incident_id, status="merged")

    async def _route(self, call: IncomingCall) -> CallResult:
        key = call_key(call.call_id)
        routed_subject = call_subject(call.call_id)
        for attempt in range(MAX_ATTEMPTS):
            route = route_call(self.directory, call, self.quorum, self.fallback_duty, self.deadlines)
            guess = self._epochs.get(route.line, 0)
            guessed = incident_subject(incident_id_for(route.line, guess))
            known = await self.store.last_of([*call_index_subjects(call.call_id), line_subject(route.line), guessed])
            duplicate = _answered(known, call.call_id)
            if duplicate is not None:
                return duplicate
            line = known.get(line_subject(route.line))
            epoch = line.event.epoch + 1 if line is not None and isinstance(line.event, LineClosed) else 0
            self._remember_epoch(route.line, epoch)
            incident_id = incident_id_for(route.line, epoch)
            fresh = epoch == guess and guessed not in known
            history = [] if fresh else await self.store.load(incident_subject(incident_id))
            state = fold([r.event for r in history])
            try:
                if state is None:
                    result = await self._open(call, key, route, epoch)
                elif state.closed:
                    await self._close_line(state)
                    continue
                elif call.call_id in state.calls:
                    status: CallStatus = (
                        "merged"
                        if call.call_id != state.opened.call_id
                        else ("unregistered" if not state.registered else "raised")
                    )
                    result = CallResult(incident_id=state.id, status=status, duplicate=True)
                else:
                    result = await self._merge(call, key, route.caller, state, history[-1].seq)
            except AppendConflict:
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            routed_event = CallRouted(
                at=call.at, call_id=call.call_id, incident_id=result.incident_id, status=result.status
            )
            await self.store.append([Outgoing(routed_subject, routed_event, f"call:{key}:routed")])
            return result
        raise StoreUnavailable(f"call {call.call_id}: too much contention, retry")

    async def _open(self, call: IncomingCall, key: str, route: Route, epoch: int) -> CallResult:
        opened = open_incident(route, call, epoch)
        status: CallStatus = "unregistered" if route.kind == "unregistered" else "raised"
        await self.store.append(
            [Outgoing(incident_subject(opened.incident_id), opened, f"call:{key}:open:{epoch}", expected_seq=0)]
        )
        self.metrics.alarms_raised.labels(route.village or "-", "alarm" if status == "raised" else "unregistered").inc()
        log.info(
            "call.raised",
            incident_id=opened.incident_id,
            status=status,
            village=route.village,
            group=route.group,
            recipients=len(route.recipients),
        )
        return CallResult(incident_id=opened.incident_id, status=status)

    async def _merge(
        self, call: IncomingCall, key: str, caller: Person, state: IncidentState, last_seq: int
    ) -> CallResult:
        repeated = repeat_call(state, call, caller)
        await self.store.append(
            [Outgoing(incident_subject(state.id), repeated, f"call:{key}:repeat:{state.id}", expected_seq=last_seq)]
        )
        log.info("call.merged", incident_id=state.id, urgency=repeated.urgency, realerted=len(repeated.realerted))
        return CallResult(incident_id=state.id, status="merged")

    async def _close_line(self, state: IncidentState) -> None:
        """Finish a close that stopped between the incident's close and its line's."""
        closed = line_closed(state, state.closed_at or state.raised_at)
        await self.store.append([Outgoing(line_subject(closed.line), closed, line_closed_msg_id(closed))])
        log.warning("call.line_repaired", incident_id=state.id, epoch=closed.epoch)


def call_routed(known: dict[str, Recorded], call_id: str) -> CallRouted | None:
    """A call id's index entry among what was read (where it is now, or where deployments before
    DISPATCH_INDEX wrote it)."""
    for subject in call_index_subjects(call_id):
        routed = known.get(subject)
        if routed is not None and isinstance(routed.event, CallRouted):
            return routed.event
    return None


def _answered(known: dict[str, Recorded], call_id: str) -> CallResult | None:
    """The answer already given to a call id, from its index entry."""
    routed = call_routed(known, call_id)
    if routed is None:
        return None
    return CallResult(incident_id=routed.incident_id, status=routed.status, duplicate=True)


def _digits_key(raw: str) -> str | None:
    """A caller key for a number that does not parse: its digits, when there are enough to tell callers
    apart (a withheld number has none: each such call stands alone)."""
    digits = "".join(ch for ch in raw if ch.isdigit())
    return f"raw:{digits}" if len(digits) >= 3 else None
