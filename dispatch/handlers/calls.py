"""Ingress: a call from a gateway (or the API, SMS, a NATS subject) becomes an incident or joins one.

Invariants:
- the answer is given only after the events are durably in the log; when the log cannot be
  reached the caller is told so (StoreUnavailable -> 503) and the gateway retries;
- the same call id always gets the same answer and notifies nobody twice: the call's first
  routing is recorded on its own subject with expected sequence 0, so concurrent retries on
  several processes agree;
- a line (group, multi-group caller, or unknown number) has at most one open incident: opening
  appends LineOpened with the line's expected sequence in the same atomic batch as AlarmRaised;
- a number in no group is never dropped: it raises an UnregisteredCall for the duty desk.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime

import msgspec
import structlog

from dispatch.clock import Clock, utcnow
from dispatch.domain.directory import Directory
from dispatch.domain.incident import IncomingCall, Quorum, Route, fold, open_incident, repeat_call, route_call
from dispatch.domain.phone import try_normalize
from dispatch.events.model import CallChannel, CallRouted, CallStatus, LineOpened, Person
from dispatch.events.subjects import call_key, call_subject, incident_subject, line_subject
from dispatch.ids import uuid7
from dispatch.metrics import Metrics
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing, StoreUnavailable

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 10


class CallRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    call_id: str
    caller: str
    callee: str = "6995"
    at: datetime | None = None
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
        region: str = "CN",
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.directory = directory
        self.quorum = quorum
        self.fallback_duty = fallback_duty
        self.metrics = metrics
        self.region = region
        self.clock = clock

    async def call(self, req: CallRequest) -> CallResult:
        now = self.clock()
        call = IncomingCall(
            call_id=req.call_id,
            caller_raw=req.caller,
            caller=try_normalize(req.caller, self.region),
            callee=req.callee,
            channel=req.channel,
            called_at=req.at or now,
            at=now,
        )
        try:
            result = await self._route(call)
        except StoreUnavailable:
            self.metrics.store_unavailable.labels("call").inc()
            self.metrics.calls.labels(req.channel, "unavailable").inc()
            raise
        self.metrics.calls.labels(req.channel, "duplicate" if result.duplicate else result.status).inc()
        return result

    async def _route(self, call: IncomingCall) -> CallResult:
        key = call_key(call.call_id)
        routed_subject = call_subject(call.call_id)
        for attempt in range(MAX_ATTEMPTS):
            routed = await self.store.last(routed_subject)
            if routed is not None and isinstance(routed.event, CallRouted):
                return CallResult(incident_id=routed.event.incident_id, status=routed.event.status, duplicate=True)
            route = route_call(self.directory, call, self.quorum, self.fallback_duty)
            line = await self.store.last(line_subject(route.line))
            try:
                if line is not None and isinstance(line.event, LineOpened):
                    merged = await self._merge(call, key, route.caller, line.event.incident_id)
                    if merged is not None:
                        return merged
                return await self._open(call, key, route, line.seq if line else 0)
            except AppendConflict:
                self.metrics.append_conflicts.inc()
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise StoreUnavailable(f"call {call.call_id}: too much contention, retry")

    async def _merge(self, call: IncomingCall, key: str, caller: Person, incident_id: str) -> CallResult | None:
        history = await self.store.load(incident_subject(incident_id))
        state = fold([r.event for r in history])
        if state is None or state.closed:
            return None
        repeated = repeat_call(state, call, caller)
        await self._append(
            [
                Outgoing(
                    call_subject(call.call_id),
                    CallRouted(at=call.at, call_id=call.call_id, incident_id=incident_id, status="merged"),
                    f"call:{key}:0",
                    expected_seq=0,
                ),
                Outgoing(incident_subject(incident_id), repeated, f"call:{key}:1", expected_seq=history[-1].seq),
            ]
        )
        log.info("call.merged", incident_id=incident_id, urgency=repeated.urgency)
        return CallResult(incident_id=incident_id, status="merged")

    async def _open(self, call: IncomingCall, key: str, route: Route, line_seq: int) -> CallResult:
        incident_id = uuid7()
        opened = open_incident(route, call, incident_id)
        status: CallStatus = "unregistered" if route.kind == "unregistered" else "raised"
        await self._append(
            [
                Outgoing(
                    call_subject(call.call_id),
                    CallRouted(at=call.at, call_id=call.call_id, incident_id=incident_id, status=status),
                    f"call:{key}:0",
                    expected_seq=0,
                ),
                Outgoing(incident_subject(incident_id), opened, f"call:{key}:1", expected_seq=0),
                Outgoing(
                    line_subject(route.line),
                    LineOpened(at=call.at, line=route.line, incident_id=incident_id),
                    f"call:{key}:2",
                    expected_seq=line_seq,
                ),
            ]
        )
        self.metrics.alarms_raised.labels(route.village or "-", "alarm" if status == "raised" else "unregistered").inc()
        log.info(
            "call.raised",
            incident_id=incident_id,
            status=status,
            village=route.village,
            group=route.group,
            recipients=len(route.recipients),
        )
        return CallResult(incident_id=incident_id, status=status)

    async def _append(self, messages: list[Outgoing]) -> list[int]:
        with self.metrics.append_seconds.time():
            return await self.store.append(messages)
