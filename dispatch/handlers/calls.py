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
- no atomic batch on this path: on a file stream batches serialize, and each costs far more than
  a single append (docs/benchmarks.md);
- a caller who floods is absorbed into the open incident past a budget (`dispatch.handlers.flood`);
  a first call is never absorbed, and nothing here ever refuses a call.
"""

from __future__ import annotations

import structlog

from dispatch.clock import Clock, utcnow
from dispatch.domain.directory import Deadlines, Directory
from dispatch.domain.drill import drill_call_id
from dispatch.domain.incident import (
    DEFAULT_DEADLINES,
    DRILL,
    IncomingCall,
    Line,
    Quorum,
    call_status,
    decide_call,
    fold,
    incident_id_for,
    route_call,
)
from dispatch.events import msgids
from dispatch.events.model import (
    CallRepeated,
    CallRouted,
    CallStatus,
    Event,
    IncidentCancelled,
    IncidentOpened,
    IncidentResolved,
    LineClosed,
    NeighboursAlerted,
    Person,
)
from dispatch.events.subjects import call_index_subjects, call_key, call_subject, incident_subject, line_subject
from dispatch.handlers.aggregates import call_routed
from dispatch.handlers.flood import CallerFlood
from dispatch.handlers.messages import CallRequest, CallResult, OpenDrill, OpenReport
from dispatch.handlers.uow import Loaded, UnitOfWork
from dispatch.observe.metrics import Metrics
from dispatch.store.eventstore import Recorded, StoreUnavailable

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 10
EPOCHS_REMEMBERED = 200_000


class Lines:
    """Where a call's decision goes: the incident's subject (expected), its line, its index entry."""

    def subject_of(self, key: str, event: Event) -> str:
        """The incident's events on its subject, a closed line on the line's, the index on the call's."""
        if isinstance(event, LineClosed):
            return line_subject(event.line)
        if isinstance(event, CallRouted):
            return call_subject(event.call_id)
        assert isinstance(event, IncidentOpened | CallRepeated | NeighboursAlerted)
        return incident_subject(event.incident_id)

    async def load(self, key: str) -> Loaded[Line]:
        """Unused: a call's line is read with its index entry in one round trip (`CallService`)."""
        raise NotImplementedError


LINES = Lines()


class CallService:
    """Turns calls into incidents: raised, merged, or (a number in no group) for the duty desk."""

    def __init__(
        self,
        uow: UnitOfWork,
        directory: Directory,
        *,
        quorum: Quorum,
        fallback_duty: tuple[Person, ...],
        metrics: Metrics,
        deadlines: Deadlines = DEFAULT_DEADLINES,
        region: str = "CN",
        clock: Clock = utcnow,
        flood: CallerFlood | None = None,
        duress_number: str | None = None,
    ) -> None:
        self.flood = flood or CallerFlood()
        self.duress_number = _digits(duress_number) if duress_number else None
        self.uow = uow
        self.store = uow.store
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

    async def call(self, req: CallRequest) -> CallResult:
        """Raise, merge or recognise a call; answered once the decision is durable in the log."""
        now = self.clock()
        call = IncomingCall(
            call_id=req.call_id,
            caller_raw=req.caller,
            caller=self.directory.caller_e164(req.caller, self.region),
            callee=req.callee,
            channel=req.channel,
            called_at=req.at or now,
            at=now,
            silent=req.silent or (self.duress_number is not None and _digits(req.callee) == self.duress_number),
        )
        caller = call.caller or _digits_key(req.caller)
        try:
            # a duress call is never absorbed into a flooding caller's (audible) incident
            absorbed = await self._absorbed(caller, call) if caller and not call.silent else None
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

    async def report(self, command: OpenReport) -> CallResult:
        """Open an incident an officer reports for a group (a walk-in, a 110 transfer): the group's
        fan-out, deadlines and reports, the origin and the reporter recorded; idempotent per report id."""
        req = command.request
        now = self.clock()
        call = IncomingCall(
            call_id=f"report:{req.report_id}",
            caller_raw=req.caller,
            caller=self.directory.caller_e164(req.caller, self.region) if req.caller else None,
            callee="",
            channel="api",
            called_at=now,
            at=now,
            for_group=(req.village, req.group),
            caller_name=req.caller_name,
            origin=req.origin,
            opened_by=command.opened_by,
            opened_by_name=command.opened_by_name,
        )
        return await self._route(call)

    async def drill(self, command: OpenDrill) -> CallResult:
        """Open a drill's incident for a group: rung, deadlines and escalation as for a call (never
        past the station), every message saying 演练 first; idempotent per drill id."""
        now = self.clock()
        call = IncomingCall(
            call_id=drill_call_id(command.drill_id),
            caller_raw="",
            caller=None,
            callee="",
            channel="api",
            called_at=now,
            at=now,
            for_group=(command.village, command.group),
            caller_name="演练",
            origin=DRILL,
            opened_by=command.opened_by,
            opened_by_name=command.opened_by_name,
        )
        return await self._route(call)

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
        for _ in range(MAX_ATTEMPTS):
            decided = await self.uow.decide_loaded(
                lambda: self._line(call),
                LINES,
                call.call_id,
                lambda line, now: decide_call(line, call, now),
                msgids.call(key),
            )
            line = decided.before
            if not decided.events or isinstance(decided.events[0], CallRouted):
                incident_id = line.answered.incident_id if line.answered else line.incident.id  # type: ignore[union-attr]
                return CallResult(incident_id=incident_id, status=call_status(line, call.call_id), duplicate=True)
            first = decided.events[0]
            if isinstance(first, LineClosed):
                log.warning("call.line_repaired", incident_id=first.incident_id, epoch=first.epoch)
                continue
            if isinstance(first, CallRepeated):
                log.info(
                    "call.merged", incident_id=first.incident_id, urgency=first.urgency, realerted=len(first.realerted)
                )
                return CallResult(incident_id=first.incident_id, status="merged")
            assert isinstance(first, IncidentOpened)
            status: CallStatus = "unregistered" if line.route.kind == "unregistered" else "raised"
            self.metrics.alarms_raised.labels(
                line.route.village or "-", "alarm" if status == "raised" else "unregistered"
            ).inc()
            log.info(
                "call.raised",
                incident_id=first.incident_id,
                status=status,
                village=line.route.village,
                group=line.route.group,
                recipients=len(line.route.recipients),
            )
            return CallResult(incident_id=first.incident_id, status=status)
        raise StoreUnavailable(f"call {call.call_id}: too much contention, retry")

    async def _line(self, call: IncomingCall) -> Loaded[Line]:
        """The call's route and line, read in one round trip with the call's index entry and the
        incident of the line's last epoch seen here (a right guess skips reading its history)."""
        route = route_call(self.directory, call, self.quorum, self.fallback_duty, self.deadlines)
        guess = self._epochs.get(route.line, 0)
        guessed = incident_subject(incident_id_for(route.line, guess))
        known = await self.store.last_of([*call_index_subjects(call.call_id), line_subject(route.line), guessed])
        closed = known.get(line_subject(route.line))
        epoch = closed.event.epoch + 1 if closed is not None and isinstance(closed.event, LineClosed) else 0
        self._remember_epoch(route.line, epoch)
        subject = incident_subject(incident_id_for(route.line, epoch))
        answered = call_routed(known, call.call_id)
        if answered is not None:
            return Loaded(Line(route, epoch, None, answered), subject, 0)
        fresh = epoch == guess and guessed not in known
        history = [] if fresh else await self.store.load(subject)
        return Loaded(Line(route, epoch, fold([r.event for r in history])), subject, history[-1].seq if history else 0)


def _answered(known: dict[str, Recorded], call_id: str) -> CallResult | None:
    """The answer already given to a call id, from its index entry."""
    routed = call_routed(known, call_id)
    if routed is None:
        return None
    return CallResult(incident_id=routed.incident_id, status=routed.status, duplicate=True)


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


def _digits_key(raw: str) -> str | None:
    """A caller key for a number that does not parse: its digits, when there are enough to tell callers
    apart (a withheld number has none: each such call stands alone)."""
    digits = "".join(ch for ch in raw if ch.isdigit())
    return f"raw:{digits}" if len(digits) >= 3 else None
